"""Built-in vendor simulators, for the demo, the tests and the benchmarks.

Each simulator is an aiohttp ``web.Application`` that speaks one vendor's API
as its doc describes, on 127.0.0.1, with switches for latency, a rate limit
(429 + Retry-After) and injected faults (see :mod:`bulkmdm.sim.common`).
Each module also says, in ``client_env``, which environment a ``bulkmdm run``
against it needs, so that ``bulkmdm sim`` and the demo print the same.

A provider names its simulator's ``make_app`` in ``Provider.simulator``; this
package finds them there, through the provider registry.
"""

from __future__ import annotations

from typing import Any

#: the fleet `bulkmdm sim` and `bulkmdm demo` serve, and that jobs/ is written for:
#: one size and seed for every vendor, so an example job matches whichever way it is tried
DEFAULT_DEVICES = 3000
DEFAULT_SEED = 1


def names() -> list[str]:
    """The registered providers that have a built-in simulator."""
    from .. import providers

    return [cls.name for cls in providers.classes() if cls.simulator]


def _target(name: str) -> tuple[str, str]:
    from .. import providers
    from ..errors import UsageError

    cls = providers.get(name)
    if not cls.simulator:
        raise UsageError(f"{cls.name} has no built-in simulator; choose one of: {', '.join(names())}.")
    module_name, _, attr = cls.simulator.partition(":")
    return module_name, attr or "make_app"


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(_target(name)[0])


def load(name: str):  # type: ignore[no-untyped-def]
    """The ``make_app`` of the simulator of provider ``name``."""
    return getattr(_module(name), _target(name)[1])


def port(name: str) -> int:
    """The port the simulator of provider ``name`` is served on where it is free (its
    module's ``PORT``; 0, any free port, when it names none)."""
    return int(getattr(_module(name), "PORT", 0))


def accepts(name: str) -> frozenset[str]:
    """The keyword arguments the simulator of provider ``name`` takes (``real``, ``checkins``, ...)."""
    import inspect

    return frozenset(inspect.signature(load(name)).parameters)


def real_behaviours() -> dict[str, str]:
    """What ``real=True`` changes, by the name of each simulator that has it (its module's ``REAL``)."""
    return {name: getattr(_module(name), "REAL", "") for name in names() if "real" in accepts(name)}


def client_env(name: str, *, username: str = "admin", password: str = "admin", partition: str = "1") -> dict[str, str]:
    """The environment a ``bulkmdm run`` against the simulator ``name`` (as
    ``bulkmdm sim`` starts it with these settings) needs."""
    return dict(_module(name).client_env(username=username, password=password, partition=partition))
