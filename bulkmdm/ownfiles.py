"""The CSV files bulkmdm wrote, known again when they come back as jobs.

A CSV cell Excel would run as a formula is written with a leading ``'``
(:func:`bulkmdm.report.neutralise`), and so is a cell that already begins
with ``'``: taking one ``'`` off every cell that begins with one gives back
exactly what was written. That must happen for bulkmdm's own files only; in a
person's own CSV a leading ``'`` is data. A report is known by its outcome
columns (``status`` and ``detail``). Every file bulkmdm writes (report, undo
file, export) is also remembered here, by the SHA-256 of its bytes, in
``written-files`` in the state folder, with the MDM it was written for (if
any): an undo file or an export read back unchanged is known wherever it was
moved, and a report beside a job says which MDM its outcomes are from even
when the journal is gone. The file is a separate one from the journal so that
moving a damaged journal aside leaves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

FILE_NAME = "written-files"
#: lines kept when the list is trimmed: years of runs, a few MB at most
_KEEP = 50_000
_TRIM_AT = _KEEP * 2 * 100  # bytes: a line is about 100


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, as :attr:`bulkmdm.jobfile.JobTable.sha256` has it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mdm_key(provider: str, url: str, partition: str | None) -> str:
    """Which MDM a file was written for, as one short value."""
    parts = (provider.casefold(), url.rstrip("/"), partition or "")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def remember(state: Path, digest: str, mdm: str | None = None) -> None:
    """Note that bulkmdm wrote the file whose bytes hash to ``digest`` (for ``mdm``).

    A state folder that cannot be written is not an error here: the journal in
    the same folder says so first, and the only loss is that the file is then
    read back as a person's own file would be.
    """
    with contextlib.suppress(OSError):
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state / FILE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{digest}\t{mdm or ''}\n".encode())
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > _TRIM_AT:
            _trim(path)


def _trim(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)[-_KEEP:]
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    temporary.write_bytes(b"".join(lines))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def written(state: Path) -> Mapping[str, str]:
    """SHA-256 -> the MDM key it was written for (``""``: none), of every file remembered."""
    try:
        text = (state / FILE_NAME).read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    known: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, mdm = line.partition("\t")
        if len(digest) == 64:
            known[digest] = mdm
    return known
