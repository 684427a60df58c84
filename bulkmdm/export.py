"""``bulkmdm export``: the MDM's devices, one row each, as a job-ready sheet.

Rows stream from the provider's ``inventory()`` (page by page) to the report
writer running in a thread, through a bounded queue: a 100,000-device fleet
is never held whole. Every cell is text (serials with leading zeros, ids past
2**53), and the column names are ones the job reader knows, so adding an
``action`` column (or ``--action``) turns the export into a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from .actions import ACTIONS, normalise_action, not_an_action
from .connect import Connection, open_provider
from .errors import TransportError, UsageError
from .providers.base import ListFailed
from .journal import state_dir
from .ownfiles import mdm_key
from .report import write_report

#: the columns every export starts with, in this order (where the vendor has them)
FIRST_COLUMNS = ("serial", "device_id", "name", "model", "email", "user")
#: rows read before the header is fixed (a column first seen later is left out)
HEADER_SAMPLE = 1_000
_DONE = object()
_ABORT = object()


class _Aborted(Exception):
    """The export failed part-way: the writer drops its unfinished file."""


def default_path(provider: str) -> Path:
    return Path(f"{provider}-devices-{time.strftime('%Y%m%d')}.xlsx")


def header_for(sample: list[dict[str, str]], action: str | None) -> list[str]:
    """``FIRST_COLUMNS`` the sample has, then the vendor's other columns in order of appearance."""
    seen: dict[str, None] = {}
    for row in sample:
        seen.update(dict.fromkeys(row))
    columns = [c for c in FIRST_COLUMNS if c in seen] + [c for c in seen if c not in FIRST_COLUMNS]
    return (["action"] if action else []) + columns


async def export_devices(
    target: Connection,
    path: Path,
    *,
    action: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every device of the MDM to ``path`` (.xlsx or .csv); the number of devices."""
    if path.suffix.lower() not in (".csv", ".xlsx"):
        raise UsageError(f"-o {path} must end in .xlsx or .csv.")
    verb = normalise_action(action) if action else None
    if verb is not None and verb not in ACTIONS:
        raise UsageError(not_an_action(action or "", flag="--action"))
    try:
        return await _export(target, path, verb, progress)
    except ListFailed as exc:
        raise TransportError(exc.detail()) from None


async def _export(target: Connection, path: Path, verb: str | None, progress: Callable[[int], None] | None) -> int:
    async with open_provider(target) as provider:
        devices = provider.inventory()
        sample = await _sample(devices)
        header = header_for(sample, verb)
        rows: queue.Queue[object] = queue.Queue(maxsize=2_000)
        # remembered as bulkmdm's own, so a CSV export read back as a job is taken exactly
        state, mdm = state_dir(None, target.env), mdm_key(target.provider, target.url, target.partition)
        writer = asyncio.ensure_future(
            asyncio.to_thread(write_report, path, header, _drain(rows), sheet="Devices", state=state, mdm=mdm)
        )
        count = 0
        try:
            async for device in _chain(sample, devices):
                cells = [verb] if verb else []
                cells += [device.get(column, "") for column in header[len(cells) :]]
                await _put(rows, cells, writer)
                count += 1
                if progress is not None and count % 500 == 0:
                    progress(count)
        except BaseException:
            # nothing half-written appears under the export's name
            await _put(rows, _ABORT, writer)
            with contextlib.suppress(_Aborted):
                await writer
            raise
        await _put(rows, _DONE, writer)
        await writer
    return count


async def _sample(devices: AsyncIterator[dict[str, str]]) -> list[dict[str, str]]:
    sample: list[dict[str, str]] = []
    async for device in devices:
        sample.append(device)
        if len(sample) >= HEADER_SAMPLE:
            break
    return sample


async def _chain(first: list[dict[str, str]], rest: AsyncIterator[dict[str, str]]) -> AsyncIterator[dict[str, str]]:
    for device in first:
        yield device
    if len(first) >= HEADER_SAMPLE:
        async for device in rest:
            yield device


async def _put(rows: queue.Queue[object], item: object, writer: asyncio.Future[None]) -> None:
    """Hand a row to the writer thread without blocking the event loop."""
    while True:
        if writer.done():
            writer.result()  # the writer failed: raise its error here
            return
        try:
            rows.put_nowait(item)
            return
        except queue.Full:
            await asyncio.sleep(0.01)


def _drain(rows: queue.Queue[object]) -> Iterator[list[str]]:
    while (item := rows.get()) is not _DONE:
        if item is _ABORT:
            raise _Aborted
        yield item  # type: ignore[misc]
