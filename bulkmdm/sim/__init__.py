"""Built-in vendor simulators, for the demo, the tests and the benchmarks.

Each simulator is an aiohttp ``web.Application`` that speaks one vendor's API
as its doc describes, on 127.0.0.1, with switches for latency, a rate limit
(429 + Retry-After) and injected faults (see :mod:`bulkmdm.sim.common`).
"""

from __future__ import annotations

SIMULATORS: dict[str, str] = {
    "duostation": "bulkmdm.sim.duostation:make_app",
    "ivanti": "bulkmdm.sim.ivanti:make_app",
    "manageengine": "bulkmdm.sim.manageengine:make_app",
    "banyan": "bulkmdm.sim.banyan:make_app",
}


def load(name: str):  # type: ignore[no-untyped-def]
    """The ``make_app`` of the simulator registered under ``name``."""
    import importlib

    module_name, _, attr = SIMULATORS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)
