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
from ..providers.base import Credential, ExtraSetting


def credential_fields() -> dict[str, tuple[Credential, ...]]:
    """provider -> the fields its credentials are typed into, as each provider declares them
    (CONTRACT.md "Credentials")."""
    from .. import providers

    return {name: providers.credential_fields(name) for name in providers.names()}


def _fields_of(provider: str) -> tuple[Credential, ...]:
    from .. import providers

    return providers.credential_fields(provider) if provider in providers.names() else ()


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
        from .. import providers

        # the page's connection is the only one a run uses: no credential or
        # setting is inherited from the shell that started `bulkmdm serve`
        inherited = providers.credential_variables()
        env = {k: v for k, v in os.environ.items() if k not in inherited}
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
    fields = _fields_of(target.provider)
    credentials = {c.variable: env.get(c.variable, "") for c in fields}
    if not any(credentials[c.variable] for c in fields if c.secret):
        raise UsageError(f"Profile {name!r} has no credentials: run `bulkmdm login --profile {name}` once.")
    return Connection(
        provider=target.provider, url=target.url.rstrip("/"), partition=target.partition or "", credentials=credentials
    )


def extra_settings(provider: str) -> tuple[ExtraSetting, ...]:
    """What the provider needs besides an address and credentials (Ivanti: the device space id)."""
    from .. import providers
    from ..errors import BulkMDMError

    try:
        return providers.get(provider).extra_settings
    except (BulkMDMError, ImportError):
        return ()


def connection_from_form(form: Mapping[str, str]) -> Connection:
    """Build a connection from the connect form; raise ``UsageError`` with one sentence if it cannot work."""
    if form.get("profile", "").strip():
        return connection_from_profile(form["profile"].strip())
    provider = form.get("provider", "").strip().casefold()
    fields = credential_fields().get(provider)
    if fields is None:
        raise UsageError("Choose the MDM product from the list.")
    url = form.get("url", "").strip()
    if not url.startswith(("https://", "http://")):
        raise UsageError("The MDM's address must start with https:// (or http:// for a local server).")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise UsageError("Type the credentials into their own fields, not into the address.")
    credentials = {c.variable: form.get(f"{provider}:{c.variable}", "").strip() for c in fields}
    if not any(credentials[c.variable] for c in fields if c.secret):
        raise UsageError(f"The {provider} credentials are empty; type them into their fields.")
    values = {}
    for setting in extra_settings(provider):
        value = form.get(f"{provider}:{setting.name}", "").strip()
        example = f" (e.g. {setting.example})" if setting.example else ""
        if not value:
            raise UsageError(f"{provider} needs the {setting.label.lower()}; type it into its field{example}.")
        if setting.digits and not (value.isascii() and value.isdigit()):
            raise UsageError(f"The {setting.label.lower()} is a number{example}, not {value!r}.")
        values[setting.name] = value
    return Connection(
        provider=provider, url=url.rstrip("/"), partition=values.get("partition", ""), credentials=credentials
    )


def typed_values(form: Mapping[str, str]) -> dict[str, str]:
    """What the connect form held, to fill it in again after an error: never a secret."""
    secret = {f"{name}:{c.variable}" for name, fields in credential_fields().items() for c in fields if c.secret}
    return {k: v for k, v in form.items() if k not in secret and k not in ("csrf", "profile")}


def values_of(connection: Connection) -> dict[str, str]:
    """The connect form filled in with a connection's values (its secrets left out)."""
    form = {"provider": connection.provider, "url": connection.url}
    form.update({f"{connection.provider}:{k}": v for k, v in connection.credentials.items()})
    if connection.partition:
        form[f"{connection.provider}:partition"] = connection.partition
    return typed_values(form)


async def check_connection(connection: Connection, *, timeout: float = 15.0) -> None:
    """Make one read-only request with the connection's credentials; raise ``UsageError`` with one
    sentence, in the page's words, when the MDM refuses it or does not answer."""
    from .. import providers
    from ..connect import Connection as Target
    from ..connect import make_client
    from ..errors import AuthError, BulkMDMError, ConfigError, TransportError
    from ..providers.base import ListFailed, Settings, explain_response

    provider_cls = providers.get(connection.provider)
    env = dict(connection.credentials)
    where = f"{connection.provider} at {connection.url}"
    target = Target(
        provider=connection.provider,
        url=connection.url,
        env=env,
        partition=connection.partition or None,
        timeout=timeout,
        retry={"attempts": 2},  # a person waits on the page: one retry of a busy MDM, not eight
    )
    try:
        client = make_client(target, provider_cls)
        provider = provider_cls(client, Settings(url=connection.url, env=env, partition=target.partition))
        async with client:
            try:
                await provider.check_access()
            finally:
                await provider.aclose()
    except AuthError as exc:
        raise UsageError(
            f"The MDM at {connection.url} refused these credentials (HTTP {exc.status}): check the "
            f"{_credential_words(connection)} and type them again."
        ) from None
    except ListFailed as exc:
        status = exc.resp.status
        if status in (404, 405):
            raise UsageError(
                f"{connection.url} answers, but not as {connection.provider} does (HTTP {status}); check the "
                f"address: it should be {provider_cls.url_hint}."
            ) from None
        needs = "".join(f"the {s.label.lower()}, " for s in provider_cls.extra_settings)
        why = explain_response(exc.resp).rstrip(".")
        raise UsageError(
            f"The MDM at {connection.url} refused a first look-up ({why}); check {needs}"
            "and that the account may use the API."
        ) from None
    except ConfigError:
        raise UsageError(
            f"These {connection.provider} credentials are not complete: fill in "
            f"{_credential_sets(provider_cls.credentials, connection.provider)}."
        ) from None
    except TransportError as exc:
        raise UsageError(
            f"No answer from {where}: {str(exc).rstrip('.')}. Check the address and that the MDM can be "
            "reached from this computer."
        ) from None
    except BulkMDMError as exc:
        raise UsageError(f"The MDM at {connection.url} cannot be used now: {str(exc).rstrip('.')}.") from None


def _labels(provider: str) -> dict[str, str]:
    return {c.variable: c.label for c in _fields_of(provider)}


def _credential_words(connection: Connection) -> str:
    labels = _labels(connection.provider)
    used = [labels.get(k, k).lower() for k, v in connection.credentials.items() if v]
    return " and ".join(used) if len(used) <= 2 else ", ".join(used[:-1]) + " and " + used[-1]


def _credential_sets(sets: tuple[tuple[str, ...], ...], provider: str) -> str:
    labels = _labels(provider)
    return "; or ".join(", ".join(labels.get(name, name) for name in names) for names in sets)
