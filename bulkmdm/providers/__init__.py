"""Vendor providers, registered by name.

Built-in vendors register the same way a plugin does: an entry in
:data:`PROVIDERS` (or the ``bulkmdm.providers`` entry-point group, loaded on
first use). Modules are imported lazily so that ``bulkmdm --help`` stays fast.

What a vendor needs (its credential variables, extra settings, limits and
simulator) is declared on its class (see :class:`~bulkmdm.providers.base.Provider`);
the CLI, profiles, keyring, web page and simulators read it through
:func:`get` and :func:`classes`, so adding a vendor touches no other module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Credential, Provider

#: provider name -> "module:Class", imported on first use
PROVIDERS: dict[str, str] = {
    "duostation": "bulkmdm.providers.duostation:DuoStation",
    "ivanti": "bulkmdm.providers.ivanti:Ivanti",
    "manageengine": "bulkmdm.providers.manageengine:ManageEngine",
    "banyan": "bulkmdm.providers.banyan:Banyan",
}

_loaded_entry_points = False


def register(name: str, target: str) -> None:
    """Register a provider class given as ``"package.module:Class"``."""
    PROVIDERS[name] = target


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="bulkmdm.providers"):
        PROVIDERS.setdefault(ep.name, ep.value)


def names() -> list[str]:
    _load_entry_points()
    return sorted(PROVIDERS)


def get(name: str) -> type[Provider]:
    """The provider class registered under ``name``."""
    _load_entry_points()
    key = (name or "").strip().casefold()
    if key not in PROVIDERS:
        raise UsageError(f"Unknown provider {name!r}; choose one of: {', '.join(sorted(PROVIDERS))} (--provider).")
    module_name, _, attr = PROVIDERS[key].partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def classes() -> list[type[Provider]]:
    """Every registered provider class, by name (each module imported)."""
    return [get(name) for name in names()]


def credential_fields(name: str) -> tuple[Credential, ...]:
    """The credential fields of provider ``name``: those it declares, then any variable of its
    ``credentials`` sets it does not describe (labelled by its name, secret)."""
    from .base import Credential

    cls = get(name)
    declared = {c.variable for c in cls.credential_fields}
    extra = [v for names in cls.credentials for v in names if v not in declared]
    return (*cls.credential_fields, *(Credential(v, v) for v in dict.fromkeys(extra)))


def credential_variables() -> frozenset[str]:
    """Every environment variable any registered provider reads a credential or a setting from."""
    found = {c.variable for name in names() for c in credential_fields(name)}
    found |= {s.variable for cls in classes() for s in cls.extra_settings if s.variable}
    return frozenset(found)


def settings_from_env(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """Provider ``name``'s extra settings that ``env`` gives through their declared variables,
    by setting name (``{"partition": "23505"}``)."""
    return {s.name: env[s.variable] for s in get(name).extra_settings if s.variable and env.get(s.variable)}


def settings_env(name: str, values: Mapping[str, str | None]) -> dict[str, str]:
    """The environment that gives provider ``name`` its extra settings ``values`` (setting
    name -> value) through their declared variables, as a child ``bulkmdm`` reads them."""
    return {s.variable: value for s in get(name).extra_settings if s.variable and (value := values.get(s.name))}


def secret_variables() -> tuple[str, ...]:
    """The environment variables that hold a secret for any registered provider, sorted."""
    return tuple(sorted({c.variable for name in names() for c in credential_fields(name) if c.secret}))


def basic_pairs() -> list[tuple[str, str]]:
    """The (user name, password) variables of each provider that sends them as HTTP Basic
    (the base's ``auth_from_env``, which reads its first credential set), without repeats."""
    from inspect import getattr_static

    from .base import Provider

    basic = getattr_static(Provider, "auth_from_env")
    pairs = [
        (cls.credentials[0][0], cls.credentials[0][1])
        for cls in classes()
        if cls.credentials and len(cls.credentials[0]) == 2 and getattr_static(cls, "auth_from_env") is basic
    ]
    return list(dict.fromkeys(pairs))
