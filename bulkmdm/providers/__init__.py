"""Vendor providers, registered by name.

Built-in vendors register the same way a plugin does: an entry in
:data:`PROVIDERS` (or the ``bulkmdm.providers`` entry-point group, loaded on
first use). Modules are imported lazily so that ``bulkmdm --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Provider

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
