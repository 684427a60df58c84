"""Profiles (``config.toml``) and secrets (the OS keyring).

A profile names an MDM once, so that a command needs only ``--profile NAME``::

    [profiles.skolan]
    provider = "duostation"
    url = "https://mdm.skolan.se"

The file lives in the user's config folder (``$XDG_CONFIG_HOME/bulkmdm`` on
Linux, the platform's own folder elsewhere; ``BULKMDM_CONFIG_DIR`` overrides
it). Flags on the command line win over the profile (:func:`resolve_target`).

Secrets never live in that file: ``bulkmdm login --profile NAME`` stores them
in the OS keyring under service ``bulkmdm``, user name ``<profile>:<VARIABLE>``
(:func:`store_secrets`), and a run with ``--profile`` fills in the credential
variables the environment does not set (:func:`environment_for`). The
environment always wins.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError

#: The keyring service every secret is stored under.
KEYRING_SERVICE = "bulkmdm"

#: The keys a profile may have.
PROFILE_KEYS = ("provider", "url", "partition", "rate", "concurrency")

# Keys that hold (or look like they hold) a credential: refused, never read.
_SECRET_KEY = re.compile(r"(?i)(pass|token|secret|api.?key|credential|user|client.?id|bulkmdm_)")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Profile:
    """One ``[profiles.NAME]`` table, checked."""

    name: str
    provider: str | None = None
    url: str | None = None
    partition: str | None = None
    rate: str | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Which MDM a command talks to: flags merged over a profile."""

    provider: str
    url: str
    partition: str | None = None
    rate: str | None = None
    concurrency: int | None = None
    profile: str | None = None


def config_dir(env: Mapping[str, str]) -> Path:
    """The folder that holds ``config.toml``."""
    if env.get("BULKMDM_CONFIG_DIR"):
        return Path(env["BULKMDM_CONFIG_DIR"])
    from platformdirs import user_config_dir

    return Path(user_config_dir("bulkmdm", appauthor=False))


def config_path(env: Mapping[str, str]) -> Path:
    return config_dir(env) / "config.toml"


def _read(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], str, Path]:
    """The raw ``[profiles.*]`` tables, the file's text and its path (no tables when there is no file)."""
    path = config_path(env)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}, "", path
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path} cannot be read ({reason}); check the file, or remove it.") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); correct that line.") from None
    return _tables(document, text, path), text, path


def load_profiles(env: Mapping[str, str]) -> dict[str, Profile]:
    """Every usable profile in ``config.toml`` (a profile with a mistake is left out)."""
    tables, text, path = _read(env)
    profiles = {}
    for name, table in tables.items():
        try:
            profiles[name] = _profile(name, table, text, path)
        except ConfigError:
            continue
    return profiles


def load_profile(name: str, env: Mapping[str, str]) -> Profile:
    """The profile ``name``; a ``ConfigError`` naming the file (and line) when it is missing or wrong."""
    tables, text, path = _read(env)
    if name in tables:
        return _profile(name, tables[name], text, path)
    if not text:
        raise ConfigError(
            f"There is no profile {name!r}: {path} does not exist; create it with a [profiles.{name}] "
            "table that sets provider and url."
        )
    if not tables:
        raise ConfigError(
            f"There is no profile {name!r}: {path} has none; add a [profiles.{name}] table with provider and url."
        )
    raise ConfigError(f"There is no profile {name!r} in {path}; it has: {', '.join(sorted(tables))}.")


def resolve_target(
    profile_name: str | None,
    *,
    provider: str | None,
    url: str | None,
    env: Mapping[str, str],
    partition: str | None = None,
    rate: str | None = None,
    concurrency: int | None = None,
) -> Target:
    """Merge a profile's values under the flags given on the command line.

    Any command that talks to an MDM (run, export, template, serve) calls this
    with its flags (``None`` for a flag not given).
    """
    profile = load_profile(profile_name, env) if profile_name else Profile(name="")
    chosen_provider = provider or profile.provider
    chosen_url = url or profile.url
    missing = [flag for flag, value in (("--provider", chosen_provider), ("--url", chosen_url)) if not value]
    if missing:
        them = "them" if len(missing) > 1 else "it"
        where = (
            f"profile {profile_name!r} does not set {them} either"
            if profile_name
            else f"or name a profile that sets {them} with --profile NAME"
        )
        raise UsageError(f"Give {' and '.join(missing)} ({where}).")
    assert chosen_provider is not None and chosen_url is not None
    return Target(
        provider=chosen_provider.strip().casefold(),
        url=chosen_url.strip(),
        partition=partition if partition is not None else profile.partition,
        rate=rate if rate is not None else profile.rate,
        concurrency=concurrency if concurrency is not None else profile.concurrency,
        profile=profile_name or None,
    )


# -- reading the file ----------------------------------------------------------


def _tables(document: Mapping[str, Any], text: str, path: Path) -> dict[str, dict[str, Any]]:
    for key in document:
        if key != "profiles":
            raise ConfigError(
                f"{path}{_at(text, None, key)}: {key!r} is not a setting bulkmdm knows; "
                "put settings in a [profiles.NAME] table."
            )
    tables = document.get("profiles", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}{_at(text, None, 'profiles')}: 'profiles' must be tables like [profiles.NAME].")
    profiles: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}{_at(text, 'profiles', name)}: profile {name!r} must be a table, written [profiles.{name}]."
            )
        if not _PROFILE_NAME.match(name):
            raise ConfigError(
                f"{path}{_at(text, f'profiles.{name}', None)}: {name!r} is not a usable profile name; "
                "use letters, digits, '-', '_' and '.'."
            )
        profiles[name] = table
    return profiles


def _profile(name: str, table: Mapping[str, Any], text: str, path: Path) -> Profile:
    section = f"profiles.{name}"
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{path}{_at(text, section, key)}"
        if _SECRET_KEY.search(key):
            raise ConfigError(
                f"{where}: secrets are never read from {path.name}; remove {key!r} and store them "
                f"in the OS keyring with `bulkmdm login --profile {name}`."
            )
        if key not in PROFILE_KEYS:
            raise ConfigError(
                f"{where}: {key!r} is not a profile setting; a profile may set {', '.join(PROFILE_KEYS)}."
            )
        values[key] = _checked(key, value, where)
    return Profile(name=name, **values)


def _checked(key: str, value: Any, where: str) -> Any:
    """A profile value in the type the CLI flags have, or a ConfigError saying what is wrong."""
    if key == "concurrency":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: concurrency must be a whole number of 1 or more, like 8.")
        return value
    if key == "partition" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be text in quotes, like {_example(key)}.")
    value = value.strip()
    if key == "provider":
        from . import providers

        if value.casefold() not in providers.names():
            raise ConfigError(
                f"{where}: provider {value!r} is not one bulkmdm knows; use one of {', '.join(providers.names())}."
            )
    elif key == "url" and not value.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: url {value!r} must start with https:// (or http:// for a local server).")
    elif key == "rate":
        from .limits import parse_rate

        try:
            parse_rate(value)
        except UsageError:
            raise ConfigError(f"{where}: rate {value!r} is not a rate; write it like '20/s' or '100/min'.") from None
    return value


def _example(key: str) -> str:
    if key == "provider":
        from . import providers

        return f'"{providers.names()[0]}"'
    return _EXAMPLES[key]


_EXAMPLES = {
    "url": '"https://mdm.example.com"',
    "partition": '"1"',
    "rate": '"100/min"',
}
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _at(text: str, section: str | None, key: str | None) -> str:
    """' (line N)' for ``key`` in table ``section`` (None: the top level), or
    for the table header when ``key`` is None; '' when it cannot be found."""
    current: str | None = None
    key_line = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*[=.]""") if key else None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(line)
        if header:
            current = re.sub(r"""\s*\.\s*|["']""", lambda m: "." if "." in m.group() else "", header.group(1))
            if key is None and current == section:
                return f" (line {number})"
            if key is not None and section is None and current.split(".")[0] == key:
                return f" (line {number})"
            continue
        if key_line is not None and current == section and key_line.match(line):
            return f" (line {number})"
    return ""


# -- secrets ---------------------------------------------------------------------


def credential_sets(provider: str) -> tuple[tuple[str, ...], ...]:
    """The alternative sets of credential variables ``provider`` reads."""
    from . import providers

    return tuple(providers.get(provider).credentials)


def keyring_backend(variables: str) -> Any:
    """The keyring backend; a ConfigError naming ``variables`` when this machine has none."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception as exc:  # a broken backend raises anything from anywhere
        raise _no_keyring(f"{type(exc).__name__}: {exc}", variables) from None
    if isinstance(backend, fail.Keyring):
        raise _no_keyring("no keyring backend is installed", variables)
    return backend


class KeyringUnavailable(ConfigError):
    """There is no usable OS keyring on this machine."""


def _no_keyring(reason: str, variables: str) -> KeyringUnavailable:
    reason = " ".join(reason.split())[:160].rstrip(".") or "it did not answer"
    return KeyringUnavailable(
        f"The OS keyring cannot be used on this machine ({reason}); set {variables} in the "
        "environment instead (see `bulkmdm run --help`)."
    )


def store_secrets(profile: str, values: Mapping[str, str]) -> None:
    """Store each credential variable's value under ``<profile>:<VARIABLE>``."""
    backend = keyring_backend(", ".join(values))
    try:
        for variable, value in values.items():
            backend.set_password(KEYRING_SERVICE, f"{profile}:{variable}", value)
    except Exception as exc:
        # only the type: a backend's message might echo what it was given
        raise _no_keyring(f"it refused to store them: {type(exc).__name__}", ", ".join(values)) from None


def environment_for(target: Target, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the credential variables it lacks filled in from the keyring
    entries of ``target.profile``. The environment always wins: the keyring is
    not even opened when one set of variables is complete there."""
    merged = dict(env)
    sets = credential_sets(target.provider)
    if target.profile is None or not sets or any(all(env.get(v) for v in names) for names in sets):
        return merged
    wanted = [v for names in sets for v in names if not env.get(v)]
    backend = keyring_backend(_either(sets))
    try:
        for variable in dict.fromkeys(wanted):
            value = backend.get_password(KEYRING_SERVICE, f"{target.profile}:{variable}")
            if value:
                merged[variable] = value
    except Exception as exc:
        raise _no_keyring(f"it could not be read: {type(exc).__name__}", _either(sets)) from None
    if not any(all(merged.get(v) for v in names) for names in sets):
        raise ConfigError(
            f"{target.provider} needs {_either(sets)}: set them in the environment, or store them "
            f"for this profile with `bulkmdm login --profile {target.profile}`."
        )
    return merged


def _either(sets: tuple[tuple[str, ...], ...]) -> str:
    return " or ".join(" and ".join(names) for names in sets)
