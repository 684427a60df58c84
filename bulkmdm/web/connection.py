"""Which MDM the web app talks to, and the credentials it hands a child run.

Credentials typed into the page live in this process's memory only: they
reach a child ``bulkmdm run`` through its environment, never through a
command line, a page, a log, a URL or a file.

Where a connection comes from is decided in one place,
:func:`connection_from_form`: typed in, or a profile of ``config.toml`` with
its credentials from the environment or the OS keyring (``bulkmdm login``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass(frozen=True, slots=True)
class Credential:
    """One environment variable a provider reads its credentials from."""

    variable: str
    label: str
    secret: bool = True


#: provider -> the fields its credentials are typed into (CONTRACT.md "Credentials").
CREDENTIAL_FIELDS: dict[str, tuple[Credential, ...]] = {
    "duostation": (
        Credential("BULKMDM_USERNAME", "User name", secret=False),
        Credential("BULKMDM_PASSWORD", "Password"),
    ),
    "ivanti": (Credential("BULKMDM_USERNAME", "User name", secret=False), Credential("BULKMDM_PASSWORD", "Password")),
    "manageengine": (
        Credential("BULKMDM_API_KEY", "API key (on-premises)"),
        Credential("BULKMDM_CLIENT_ID", "OAuth client id (cloud)"),
        Credential("BULKMDM_CLIENT_SECRET", "OAuth client secret (cloud)"),
        Credential("BULKMDM_REFRESH_TOKEN", "OAuth refresh token (cloud)"),
        Credential("BULKMDM_OAUTH_URL", "OAuth token URL (optional)", secret=False),
    ),
    "banyan": (Credential("BULKMDM_TOKEN", "API token"),),
}

#: Every variable a child must not inherit from the shell that started
#: ``bulkmdm serve``: the page's connection is the only one a run uses.
_INHERITED_CREDENTIALS = frozenset(
    {c.variable for fields in CREDENTIAL_FIELDS.values() for c in fields} | {"BULKMDM_PARTITION_ID"}
)


@dataclass(frozen=True, slots=True)
class Connection:
    """An MDM to run against. ``credentials`` never appear in ``repr``."""

    provider: str
    url: str
    partition: str = ""
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{self.provider} at {self.url}"

    def child_environment(self) -> dict[str, str]:
        """The environment of a child run: ours, minus inherited credentials, plus this connection's."""
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_CREDENTIALS}
        env.update({k: v for k, v in self.credentials.items() if v})
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_COLOR"] = "1"
        return env


def profile_names() -> list[str]:
    """The profiles of config.toml, for the picker (none when the file is missing or broken)."""
    from ..config import load_profiles
    from ..errors import BulkMDMError

    try:
        return sorted(load_profiles(os.environ))
    except BulkMDMError:
        return []


def connection_from_profile(name: str) -> Connection:
    """The MDM of profile ``name``, its credentials from the environment or the keyring (``ConfigError`` if none)."""
    from ..config import environment_for, resolve_target

    target = resolve_target(name, provider=None, url=None, env=os.environ)
    env = environment_for(target, os.environ)
    fields = CREDENTIAL_FIELDS.get(target.provider, ())
    credentials = {c.variable: env.get(c.variable, "") for c in fields}
    if not any(credentials[c.variable] for c in fields if c.secret):
        raise UsageError(f"Profile {name!r} has no credentials: run `bulkmdm login --profile {name}` once.")
    return Connection(
        provider=target.provider, url=target.url.rstrip("/"), partition=target.partition or "", credentials=credentials
    )


def connection_from_form(form: Mapping[str, str]) -> Connection:
    """Build a connection from the connect form; raise ``UsageError`` with one sentence if it cannot work."""
    if form.get("profile", "").strip():
        return connection_from_profile(form["profile"].strip())
    provider = form.get("provider", "").strip().casefold()
    if provider not in CREDENTIAL_FIELDS:
        raise UsageError("Choose the MDM product from the list.")
    url = form.get("url", "").strip()
    if not url.startswith(("https://", "http://")):
        raise UsageError("The MDM's address must start with https:// (or http:// for a local server).")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise UsageError("Type the credentials into their own fields, not into the address.")
    credentials = {c.variable: form.get(f"{provider}:{c.variable}", "").strip() for c in CREDENTIAL_FIELDS[provider]}
    if not any(credentials[c.variable] for c in CREDENTIAL_FIELDS[provider] if c.secret):
        raise UsageError(f"The {provider} credentials are empty; type them into their fields.")
    partition = form.get("partition", "").strip()
    if provider == "ivanti" and not partition:
        raise UsageError("Ivanti needs the device space id; type it into the Device space field.")
    return Connection(provider=provider, url=url.rstrip("/"), partition=partition, credentials=credentials)
