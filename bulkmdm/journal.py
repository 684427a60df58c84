"""The journal: SQLite state of every run. It owns all SQL.

One file (``journal.sqlite3``) under the user's state directory, readable by
its owner only, in WAL mode with one writer. Per run it records the run's
identity and every row's input cells and state:

    pending  -> in_flight (written *before* the request is sent) -> done

A ``done`` row carries its outcome. The report is generated from here, so it
can always be rebuilt (``bulkmdm report RUN``), and a run that died is
continued from here (rows ``done`` are never sent again; rows ``in_flight``
are reconciled by the engine). No credential is ever written here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import JournalError
from .model import Outcome, Status

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL,
        job_path TEXT NOT NULL,
        job_sha256 TEXT NOT NULL,
        provider TEXT NOT NULL,
        url TEXT NOT NULL,
        action TEXT,
        partition_id TEXT,
        dry_run INTEGER NOT NULL DEFAULT 0,
        headers TEXT NOT NULL,
        delimiter TEXT NOT NULL DEFAULT ',',
        report_path TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        finished REAL
    );
    CREATE INDEX runs_identity ON runs(identity);
    CREATE TABLE rows (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        cells TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        status TEXT,
        detail TEXT,
        http_status TEXT,
        attempts TEXT,
        resolved TEXT,
        PRIMARY KEY (run_id, idx)
    ) WITHOUT ROWID;
    """,
}

PENDING, IN_FLIGHT, DONE = "pending", "in_flight", "done"


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    identity: str
    job_path: str
    job_sha256: str
    provider: str
    url: str
    action: str | None
    partition_id: str | None
    dry_run: bool
    headers: tuple[str, ...]
    delimiter: str
    report_path: str
    created: float
    updated: float
    finished: float | None


@dataclass(frozen=True, slots=True)
class RowRecord:
    idx: int
    cells: list[str]
    state: str
    status: str | None
    detail: str | None
    http_status: str | None
    attempts: str | None
    resolved: str | None


class Journal:
    """The state database. Use as a context manager, or call ``close()``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = self.dir / "journal.sqlite3"
            if not self.path.exists():
                # create it owner-only before SQLite writes a byte
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(
                f"Cannot use the state database in {self.dir} ({exc}); pass --state-dir to use another folder."
            ) from None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise JournalError(
                f"The state database {self.path} was written by a newer bulkmdm; upgrade bulkmdm or pass --state-dir."
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, *rest: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> Journal._Tx:
        return Journal._Tx(self.db)

    # -- runs ---------------------------------------------------------------
    def create_run(
        self,
        *,
        identity: str,
        job_path: str,
        job_sha256: str,
        provider: str,
        url: str,
        action: str | None,
        partition_id: str | None,
        dry_run: bool,
        headers: Sequence[str],
        delimiter: str,
        report_path: str,
        rows: Iterable[Sequence[str]],
    ) -> int:
        now = time.time()
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO runs (identity, job_path, job_sha256, provider, url, action, partition_id, dry_run,"
                " headers, delimiter, report_path, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (identity, job_path, job_sha256, provider, url, action, partition_id, int(dry_run),
                 json.dumps(list(headers)), delimiter, report_path, now, now),
            )
            run_id = int(cur.lastrowid or 0)
            self.db.executemany(
                "INSERT INTO rows (run_id, idx, cells) VALUES (?,?,?)",
                ((run_id, i, json.dumps(list(cells), ensure_ascii=False)) for i, cells in enumerate(rows)),
            )
        return run_id

    def resumable(self, identity: str) -> RunInfo | None:
        """The newest unfinished, non-dry run with this identity."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE identity = ? AND finished IS NULL AND dry_run = 0 ORDER BY id DESC LIMIT 1",
            (identity,),
        ).fetchone()
        return self._run(row) if row else None

    def run(self, run_id: int) -> RunInfo:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise JournalError(f"There is no run {run_id}; `bulkmdm runs` lists them.")
        return self._run(row)

    def runs(self, limit: int = 50) -> list[tuple[RunInfo, dict[str, int]]]:
        out = []
        for row in self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall():
            info = self._run(row)
            out.append((info, self.counts(info.id)))
        return out

    def _run(self, row: Sequence[Any]) -> RunInfo:
        values = list(row)
        values[8] = bool(values[8])
        values[9] = tuple(json.loads(values[9]))
        return RunInfo(*values)

    def finish(self, run_id: int) -> None:
        now = time.time()
        self.db.execute("UPDATE runs SET finished = ?, updated = ? WHERE id = ?", (now, now, run_id))

    def set_report_path(self, run_id: int, path: str) -> None:
        self.db.execute("UPDATE runs SET report_path = ? WHERE id = ?", (path, run_id))

    def delete_runs(self, keep: int = 100) -> None:
        """Forget all but the newest ``keep`` runs."""
        with self._tx():
            self.db.execute(
                "DELETE FROM rows WHERE run_id IN (SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?)", (keep,)
            )
            self.db.execute("DELETE FROM runs WHERE id IN (SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?)",
                            (keep,))

    def delete_run(self, run_id: int) -> None:
        """Forget one run (one that sent nothing, e.g. refused credentials)."""
        with self._tx():
            self.db.execute("DELETE FROM rows WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- rows ---------------------------------------------------------------
    def indices(self, run_id: int, state: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT idx FROM rows WHERE run_id = ? AND state = ? ORDER BY idx", (run_id, state))]

    def counts(self, run_id: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for state, status, n in self.db.execute(
            "SELECT state, status, count(*) FROM rows WHERE run_id = ? GROUP BY state, status", (run_id,)
        ):
            key = status if state == DONE and status else state
            out[key] = out.get(key, 0) + n
        return out

    def mark_in_flight(self, run_id: int, indices: Iterable[int]) -> None:
        """Written (and committed) before the request is sent."""
        with self._tx():
            self.db.executemany(
                "UPDATE rows SET state = 'in_flight' WHERE run_id = ? AND idx = ?", ((run_id, i) for i in indices)
            )

    def record(self, run_id: int, outcomes: Iterable[Outcome]) -> None:
        """Record what became of rows. A row that was not sent (not-run) stays
        pending: the same command sends it when the run continues."""
        with self._tx():
            self.db.executemany(
                "UPDATE rows SET state = ?, status = ?, detail = ?, http_status = ?, attempts = ?, resolved = ?"
                " WHERE run_id = ? AND idx = ?",
                (
                    (PENDING if o.status is Status.NOT_RUN else DONE, str(o.status), o.detail,
                     _text(o.http_status), _text(o.attempts or None), o.resolved, run_id, o.index)
                    for o in outcomes
                ),
            )
            self.db.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def record_raw(self, run_id: int, items: Iterable[tuple[int, Sequence[str]]]) -> None:
        """Record outcomes carried over as text (an earlier report's columns)."""
        with self._tx():
            self.db.executemany(
                "UPDATE rows SET state = 'done', status = ?, detail = ?, http_status = ?, attempts = ?, resolved = ?"
                " WHERE run_id = ? AND idx = ?",
                ((*values, run_id, idx) for idx, values in items),
            )

    def rows(self, run_id: int) -> Iterator[RowRecord]:
        cur = self.db.execute(
            "SELECT idx, cells, state, status, detail, http_status, attempts, resolved FROM rows"
            " WHERE run_id = ? ORDER BY idx",
            (run_id,),
        )
        for idx, cells, state, status, detail, http_status, attempts, resolved in cur:
            yield RowRecord(idx, json.loads(cells), state, status, detail, http_status, attempts, resolved)


def _text(value: object) -> str | None:
    return None if value is None else str(value)
