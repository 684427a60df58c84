"""The journal: SQLite state of every run. It owns all SQL.

One file (``journal.sqlite3``) under the user's state directory, readable by
its owner only, in WAL mode with one writer. Per run it records the run's
identity and every row's input cells and state:

    pending  -> in_flight (written *before* a change is sent) -> done

A ``done`` row carries its outcome. The report is generated from here, so it
can always be rebuilt (``bulkmdm report RUN``), and a run that died is
continued from here (rows ``done`` are never sent again; rows ``in_flight``
are reconciled by the engine). Every row also keeps a digest of its content
(action and the cells that define the change), so that a job saved again
after a crash continues by content, not by line number. A lock per job
identity says which process is running it. No credential is ever written
here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, NamedTuple

from .errors import JournalError
from .model import Outcome, Reason, Status

SCHEMA_VERSION = 6

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
    # Version 2: a run is recognised by the job's path (not its bytes) and its
    # rows by their content; the job's digest is now of its rows' cells.
    2: """
    ALTER TABLE runs RENAME COLUMN job_sha256 TO content;
    ALTER TABLE runs ADD COLUMN stop_reason TEXT;
    ALTER TABLE runs ADD COLUMN exit_code INTEGER;
    ALTER TABLE runs ADD COLUMN superseded_by INTEGER;
    ALTER TABLE rows ADD COLUMN action TEXT NOT NULL DEFAULT '';
    ALTER TABLE rows ADD COLUMN digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE rows ADD COLUMN label TEXT NOT NULL DEFAULT '';
    CREATE TABLE locks (
        identity TEXT PRIMARY KEY,
        run_id INTEGER,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        started REAL NOT NULL
    );
    """,
    3: """
    ALTER TABLE rows ADD COLUMN undo TEXT;
    CREATE TABLE calls (
        tenant TEXT NOT NULL,
        day TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (tenant, day)
    );
    """,
    # the undo file a run writes (never another run's); rows carried in from a
    # report, which this run did not change
    4: """
    ALTER TABLE runs ADD COLUMN undo_path TEXT;
    ALTER TABLE rows ADD COLUMN carried INTEGER NOT NULL DEFAULT 0;
    """,
    # when each row's change last went out (epoch seconds, written as it is
    # marked in flight): `bulkmdm track` compares a device's last check-in with it
    5: """
    ALTER TABLE rows ADD COLUMN sent_at REAL;
    """,
    # each row's reason code (model.Reason); NULL (rows written before, or
    # carried in from a report's columns) reads as its status's usual reason
    6: """
    ALTER TABLE rows ADD COLUMN reason TEXT;
    """,
}

PENDING, IN_FLIGHT, DONE = "pending", "in_flight", "done"

# json.dumps with any option builds a new encoder per call; this one is built once
# (the same text as json.dumps(undo)).
_undo_json = json.JSONEncoder().encode
_loads = json.JSONDecoder().decode


def cells_json(cells: Iterable[str]) -> str:
    """A row's text cells as the journal stores them: the text of
    ``json.dumps(list(cells), ensure_ascii=False)``, made by the function that
    call quotes each string with, without building an encoder per row."""
    return "[" + ", ".join(map(encode_basestring, cells)) + "]"


_NOT_RUN = str(Status.NOT_RUN)

#: one outcome: status, detail, http_status, attempts, resolved, reason, run, row. A row
#: not sent (not-run) stays pending, to be sent when the run continues.
_OUTCOME = (
    "UPDATE rows SET state = iif(?1 = 'not-run', 'pending', 'done'), status = ?1, detail = ?2, http_status = ?3,"
    " attempts = ?4, resolved = ?5, reason = ?6 WHERE run_id = ?7 AND idx = ?8"
)
#: one outcome with the row that undoes its change: as _OUTCOME, the undo row before the run and row
_OUTCOME_UNDO = (
    "UPDATE rows SET state = iif(?1 = 'not-run', 'pending', 'done'), status = ?1, detail = ?2, http_status = ?3,"
    " attempts = ?4, resolved = ?5, reason = ?6, undo = ?7 WHERE run_id = ?8 AND idx = ?9"
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    identity: str
    job_path: str
    #: digest of the job's rows (cells, in order): equal when the job is unchanged
    content: str
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
    #: the sentence rows left unsent show as their detail (why the run stopped)
    stop_reason: str | None
    exit_code: int | None
    superseded_by: int | None
    #: the undo file this run wrote (None until it writes one)
    undo_path: str | None = None


class RowRecord(NamedTuple):
    """One row of a run as the journal holds it (a tuple: a report reads one per row)."""

    idx: int
    cells: list[str]
    state: str
    status: str | None
    detail: str | None
    http_status: str | None
    attempts: str | None
    resolved: str | None
    action: str
    label: str
    #: why the row ended as it did (for a row not yet done: its status's usual reason)
    reason: Reason = Reason.NOT_SENT


#: A row as :meth:`Journal.row_values` gives it: idx, cells, state, status, detail,
#: http_status, attempts, resolved, action, label and the stored reason code.
RowValues = tuple[int, list[str], str, str | None, str | None, str | None, str | None, str | None, str, str, str | None]

#: reason code -> Reason (a dict look-up: a report reads one per row)
_REASONS = {str(reason): reason for reason in Reason}


def _reason(code: str | None, status: str | None) -> Reason:
    """A stored reason code; none (an older journal, a report's columns) or one this
    bulkmdm does not know reads as the status's usual reason."""
    found = _REASONS.get(code) if code else None
    return Reason.of_status(status) if found is None else found


class NewRow(NamedTuple):
    """A row as the journal stores it when a run is created (a tuple: a run
    creates one per row of its job)."""

    cells: Sequence[str]
    action: str
    #: digest of the row's content (action and the cells that define the change)
    digest: str
    #: what the row acts on (serial, device id, email), for summaries
    label: str


@dataclass(frozen=True, slots=True)
class LockHolder:
    """The process that holds a job's lock."""

    run_id: int | None
    pid: int
    host: str
    started: float


def state_dir(explicit: Path | None, env: Mapping[str, str]) -> Path:
    """Where the journal lives: --state-dir, else BULKMDM_STATE_DIR, else the user's state folder."""
    if explicit is not None:
        return explicit
    if env.get("BULKMDM_STATE_DIR"):
        return Path(env["BULKMDM_STATE_DIR"])
    from platformdirs import user_state_dir

    return Path(user_state_dir("bulkmdm", appauthor=False))


class Journal:
    """The state database. Use as a context manager, or call ``close()``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir).expanduser()
        self.path = self.dir / "journal.sqlite3"
        #: run id -> when its ``updated`` was last written
        self._touched: dict[int, float] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # create it owner-only before SQLite writes a byte
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            self.db = _Connection(sqlite3.connect(self.path, isolation_level=None, timeout=10), self)
        except OSError as exc:
            raise JournalError(
                f"Cannot use the state database in {self.dir} ({exc.strerror or exc}); "
                "pass --state-dir to use another folder."
            ) from None
        except sqlite3.Error as exc:
            raise self.translate(exc) from None
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def translate(self, exc: sqlite3.Error) -> JournalError:
        """One sentence for an SQLite error: what happened, where, and the way on."""
        text = str(exc)
        lowered = text.casefold()
        if "full" in lowered or "disk i/o" in lowered:
            return JournalError(
                f"Cannot write the state database in {self.dir}: the disk is full or refused the write ({text}). "
                "Every row recorded before is kept; free some space, then run the same command again to continue."
            )
        if "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
            return JournalError(
                f"The state database {self.path} is damaged ({text}); move that file aside to start over "
                "(the runs it recorded can then not be resumed), or pass --state-dir to use another folder."
            )
        if "locked" in lowered or "busy" in lowered:
            return JournalError(
                f"The state database {self.path} is busy (another bulkmdm holds it); wait for it to finish, "
                "then run again."
            )
        return JournalError(
            f"Cannot use the state database {self.path} ({text}); pass --state-dir to use another folder."
        )

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
        self._migrate_from(current)

    def _migrate_from(self, current: int) -> None:
        """Apply the migrations after ``current``, the version read before any lock."""
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                # another bulkmdm opening the same fresh folder may have migrated meanwhile:
                # the version is read again under the write lock this transaction holds
                done = self.db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
                if done >= version:
                    continue
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    class _Tx:
        def __init__(self, db: _Connection) -> None:
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
        content: str,
        provider: str,
        url: str,
        action: str | None,
        partition_id: str | None,
        dry_run: bool,
        headers: Sequence[str],
        delimiter: str,
        report_path: str,
        rows: Iterable[NewRow],
    ) -> int:
        now = time.time()
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO runs (identity, job_path, content, provider, url, action, partition_id, dry_run,"
                " headers, delimiter, report_path, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    identity,
                    job_path,
                    content,
                    provider,
                    url,
                    action,
                    partition_id,
                    int(dry_run),
                    json.dumps(list(headers)),
                    delimiter,
                    report_path,
                    now,
                    now,
                ),
            )
            run_id = int(cur.lastrowid or 0)
            self.db.executemany(
                "INSERT INTO rows (run_id, idx, cells, action, digest, label) VALUES (?,?,?,?,?,?)",
                (
                    (run_id, i, cells_json(cells), action, digest, label)
                    for i, (cells, action, digest, label) in enumerate(rows)
                ),
            )
        return run_id

    def latest(self, identity: str) -> RunInfo | None:
        """The newest real (not dry) run with this identity that no later run took over."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE identity = ? AND dry_run = 0 AND superseded_by IS NULL ORDER BY id DESC LIMIT 1",
            (identity,),
        ).fetchone()
        return self._run(row) if row else None

    def for_report(self, report_path: str) -> RunInfo | None:
        """The newest real run that wrote its report to ``report_path`` (resolved), if any."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE report_path = ? AND dry_run = 0 ORDER BY id DESC LIMIT 1", (report_path,)
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

    def later_writers(self, run_id: int) -> list[RunInfo]:
        """Later real runs whose report is the file run ``run_id``'s report is (a report run again, a job continued)."""
        rows = self.db.execute(
            "SELECT * FROM runs WHERE id > ? AND dry_run = 0"
            " AND report_path = (SELECT report_path FROM runs WHERE id = ?) ORDER BY id",
            (run_id, run_id),
        ).fetchall()
        return [self._run(row) for row in rows]

    def _run(self, row: Sequence[Any]) -> RunInfo:
        values = list(row)
        values[8] = bool(values[8])
        values[9] = tuple(json.loads(values[9]))
        return RunInfo(*values)

    def finish(self, run_id: int, exit_code: int = 0) -> None:
        now = time.time()
        self.db.execute(
            "UPDATE runs SET finished = ?, updated = ?, exit_code = ? WHERE id = ?", (now, now, exit_code, run_id)
        )

    def set_report_path(self, run_id: int, path: str) -> None:
        self.db.execute("UPDATE runs SET report_path = ? WHERE id = ?", (path, run_id))

    def set_stop_reason(self, run_id: int, reason: str | None) -> None:
        self.db.execute("UPDATE runs SET stop_reason = ? WHERE id = ?", (reason, run_id))

    def supersede(self, old_id: int, new_id: int) -> None:
        """``new_id`` continues ``old_id`` (the job changed in between), and its undo file."""
        self.db.execute("UPDATE runs SET superseded_by = ? WHERE id = ?", (new_id, old_id))
        self.db.execute(
            "UPDATE runs SET undo_path = (SELECT undo_path FROM runs WHERE id = ?) WHERE id = ?", (old_id, new_id)
        )

    def set_undo_path(self, run_id: int, path: str) -> None:
        self.db.execute("UPDATE runs SET undo_path = ? WHERE id = ?", (path, run_id))

    def delete_runs(self, keep: int = 100) -> None:
        """Forget all but the newest ``keep`` runs."""
        with self._tx():
            self.db.execute(
                "DELETE FROM rows WHERE run_id IN (SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?)", (keep,)
            )
            self.db.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs ORDER BY id DESC LIMIT -1 OFFSET ?)", (keep,)
            )

    def delete_run(self, run_id: int) -> None:
        """Forget one run (one that sent nothing, e.g. refused credentials)."""
        with self._tx():
            self.db.execute("DELETE FROM rows WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- rows ---------------------------------------------------------------
    def indices(self, run_id: int, state: str) -> list[int]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT idx FROM rows WHERE run_id = ? AND state = ? ORDER BY idx", (run_id, state)
            )
        ]

    def to_send(self, run_id: int) -> list[int]:
        """Rows still to send: never sent, or left ``not-run`` by a run that stopped."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT idx FROM rows WHERE run_id = ? AND (state = ? OR (state = ? AND status = ?)) ORDER BY idx",
                (run_id, PENDING, DONE, _NOT_RUN),
            )
        ]

    def counts(self, run_id: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for state, status, n in self.db.execute(
            "SELECT state, status, count(*) FROM rows WHERE run_id = ? GROUP BY state, status", (run_id,)
        ):
            key = status if state == DONE and status else state
            out[key] = out.get(key, 0) + n
        return out

    def carry_over(self, old_id: int, new_id: int) -> int:
        """Give the new run's rows the outcome (or in-flight state) of the earlier
        run's rows with the same content; return how many were carried.

        Rows are paired by digest and, among equal digests, by order, so two
        identical rows of the new job take at most two finished ones."""
        with self._tx():
            cur = self.db.execute(
                """
                WITH old AS (
                    SELECT state, status, detail, http_status, attempts, resolved, undo, carried, sent_at, reason,
                           digest,
                           row_number() OVER (PARTITION BY digest ORDER BY idx) AS nth
                    FROM rows WHERE run_id = ? AND state != ? AND NOT (state = ? AND status = ?)
                ), new AS (
                    SELECT idx, digest, row_number() OVER (PARTITION BY digest ORDER BY idx) AS nth
                    FROM rows WHERE run_id = ? AND state = ?
                ), pairs AS (
                    SELECT new.idx, old.* FROM new JOIN old ON old.digest = new.digest AND old.nth = new.nth
                )
                UPDATE rows SET state = pairs.state, status = pairs.status, detail = pairs.detail,
                    http_status = pairs.http_status, attempts = pairs.attempts, resolved = pairs.resolved,
                    undo = pairs.undo, carried = pairs.carried, sent_at = pairs.sent_at, reason = pairs.reason
                FROM pairs WHERE rows.run_id = ? AND rows.idx = pairs.idx
                """,
                (old_id, PENDING, DONE, _NOT_RUN, new_id, PENDING, new_id),
            )
            del cur  # rowcount is -1 for a statement that starts with WITH
            return int(self.db.execute("SELECT changes()").fetchone()[0])

    def mark_in_flight(
        self, run_id: int, indices: Iterable[int], undo: Iterable[tuple[int, Mapping[str, str]]] = ()
    ) -> None:
        """Written (and committed) before the request is sent; ``undo``: (row, the
        row that undoes its change) for the changes that can be undone."""
        self.write(run_id, in_flight=indices, undo=undo)

    def record(self, run_id: int, outcomes: Iterable[Outcome]) -> None:
        """Record what became of rows. A row that was not sent (not-run) stays
        pending: the same command sends it when the run continues."""
        self.write(run_id, outcomes)

    def write(
        self,
        run_id: int,
        outcomes: Iterable[Outcome] | None = None,
        in_flight: Iterable[int] = (),
        undo: Iterable[tuple[int, Mapping[str, str]]] = (),
    ) -> None:
        """Mark rows in flight and record outcomes (as ``mark_in_flight`` and
        ``record`` do) in one transaction, committed when this returns.

        The undo row of a change is written as it goes out: a run that dies
        with it in flight and finds it done when it continues still has it.
        An outcome without one keeps it."""
        # One transaction costs far more than the rows in it (taking the write
        # lock, appending the pages to the WAL), so the pool hands over what
        # its workers did within a millisecond (schedule.COMMIT_DELAY) at once.
        # The statements' rows are made before the write lock is taken, and a
        # statement with no rows is not run.
        sent_at = time.time()
        # the rows of one flush are mostly consecutive (the workers take the
        # batches in row order): one statement per run of them walks the
        # table once instead of looking up each row
        marks = [(sent_at, run_id, first, last) for first, last in _spans(in_flight)]
        undo_rows = [(_undo_json(dict(u)), run_id, i) for i, u in undo]
        if outcomes is None:
            done = with_undo = None
        else:
            # http_status and attempts are TEXT columns: SQLite stores the
            # integers bound to them as their text
            done = []
            with_undo = []
            for o in outcomes:
                if o.undo:
                    with_undo.append(
                        (
                            o.status,
                            o.detail,
                            o.http_status,
                            o.attempts or None,
                            o.resolved,
                            o.reason,
                            _undo_json(dict(o.undo)),
                            run_id,
                            o.index,
                        )
                    )
                else:
                    done.append(
                        (o.status, o.detail, o.http_status, o.attempts or None, o.resolved, o.reason, run_id, o.index)
                    )
        with self._tx():
            if marks:
                self.db.executemany(
                    "UPDATE rows SET state = 'in_flight', sent_at = ? WHERE run_id = ? AND idx BETWEEN ? AND ?", marks
                )
            if undo_rows:
                self.db.executemany("UPDATE rows SET undo = ? WHERE run_id = ? AND idx = ?", undo_rows)
            if done is None or with_undo is None:
                return
            # an outcome without an undo row keeps the one its row has
            if done:
                self.db.executemany(_OUTCOME, done)
            if with_undo:
                self.db.executemany(_OUTCOME_UNDO, with_undo)
            now = time.time()
            # to the second: a run's every transaction need not rewrite its runs row too
            if now - self._touched.get(run_id, 0.0) >= 1.0:
                self._touched[run_id] = now
                self.db.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))

    #: the rows whose change the run made, or may have made (in flight: unknown) and can put back
    _CHANGED = (
        "run_id = ? AND carried = 0"
        " AND ((state = 'done' AND status = 'succeeded') OR (state = 'in_flight' AND undo IS NOT NULL))"
    )

    def undo_rows(self, run_id: int) -> Iterator[tuple[str, dict[str, str]]]:
        """The changes the run made that can be put back, last first: (action, the row that
        undoes it); the rows still in flight (unknown: their change may have been made) too."""
        cur = self.db.execute(
            f"SELECT action, undo FROM rows WHERE {self._CHANGED} AND undo IS NOT NULL ORDER BY idx DESC", (run_id,)
        )
        try:
            for action, undo in cur:
                yield action, json.loads(undo)
        except sqlite3.Error as exc:
            raise self.translate(exc) from None

    def not_undoable(self, run_id: int) -> dict[str, int]:
        """Action -> the changes the run made that cannot be put back (no undo row)."""
        cur = self.db.execute(
            f"SELECT action, count(*) FROM rows WHERE {self._CHANGED} AND undo IS NULL GROUP BY action", (run_id,)
        )
        return {action: count for action, count in cur}

    def sent_times(self, run_id: int) -> dict[int, float]:
        """Row -> when its change last went out (epoch seconds), for the rows the journal knows it of.

        A row carried into this run from an earlier report (run again as the
        job) went out in the run that wrote that report: its time is that
        run's row's of the same content."""
        out: dict[int, float] = {}
        carried: dict[str, list[int]] = {}
        for idx, sent, is_carried, digest in self.db.execute(
            "SELECT idx, sent_at, carried, digest FROM rows WHERE run_id = ?", (run_id,)
        ):
            if sent is not None:
                out[idx] = float(sent)
            elif is_carried:
                carried.setdefault(digest, []).append(idx)
        if carried:
            run = self.run(run_id)
            earlier = self.db.execute(
                "SELECT id FROM runs WHERE id < ? AND dry_run = 0 AND provider = ? AND url = ?"
                " AND report_path IN (?, ?) ORDER BY id DESC",
                (run_id, run.provider, run.url, run.report_path, run.job_path),
            ).fetchall()
            for (earlier_id,) in earlier:
                for digest, sent in self.db.execute(
                    "SELECT digest, sent_at FROM rows WHERE run_id = ? AND sent_at IS NOT NULL ORDER BY idx",
                    (earlier_id,),
                ):
                    for idx in carried.pop(digest, ()):
                        out[idx] = float(sent)
                if not carried:
                    break
        return out

    def record_raw(self, run_id: int, items: Iterable[tuple[int, Sequence[str]]]) -> None:
        """Record outcomes carried over as text (an earlier report's columns): not this run's changes."""
        with self._tx():
            self.db.executemany(
                "UPDATE rows SET state = 'done', status = ?, detail = ?, http_status = ?, attempts = ?, resolved = ?,"
                " carried = 1, reason = NULL WHERE run_id = ? AND idx = ?",
                ((*values, run_id, idx) for idx, values in items),
            )

    def rows(self, run_id: int) -> Iterator[RowRecord]:
        cur = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM rows WHERE run_id = ? ORDER BY idx",
            (run_id,),
        )
        try:
            for values in cur:
                yield _record(values)
        except sqlite3.Error as exc:
            raise self.translate(exc) from None

    def row_values(self, run_id: int) -> Iterator[RowValues]:
        """:meth:`rows` as plain tuples, without a RowRecord each (a report reads a
        million): the same values in the same order, the reason as its stored code
        (:func:`row_reason` reads it)."""
        cur = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM rows WHERE run_id = ? ORDER BY idx",
            (run_id,),
        )
        try:
            for idx, cells, state, status, detail, http_status, attempts, resolved, action, label, code in cur:
                yield idx, _loads(cells), state, status, detail, http_status, attempts, resolved, action, label, code
        except sqlite3.Error as exc:
            raise self.translate(exc) from None

    def find_rows(
        self,
        run_id: int,
        *,
        keys: Collection[str] = (),
        search: str = "",
        offset: int = 0,
        limit: int = 50,
        newest_first: bool = False,
    ) -> list[RowRecord]:
        """One page of a run's rows, in line order (or last first): those whose key (as
        :meth:`counts` names them) is one of ``keys`` (any, when empty) and whose label or cells
        hold ``search``. SQLite walks the run's rows in key order and stops at the page's end,
        so the first pages of a 100,000-row run cost what a 50-row run's do."""
        where, parameters = _row_filter(run_id, keys, search)
        order = "DESC" if newest_first else "ASC"
        try:
            cur = self.db.execute(
                f"SELECT {_ROW_COLUMNS} FROM rows WHERE {where} ORDER BY idx {order} LIMIT ? OFFSET ?",
                (*parameters, max(0, limit), max(0, offset)),
            )
            return [_record(values) for values in cur]
        except sqlite3.Error as exc:
            raise self.translate(exc) from None

    def count_rows(self, run_id: int, *, keys: Collection[str] = (), search: str = "") -> int:
        """How many rows :meth:`find_rows` would page through."""
        where, parameters = _row_filter(run_id, keys, search)
        try:
            return int(self.db.execute(f"SELECT count(*) FROM rows WHERE {where}", parameters).fetchone()[0])
        except sqlite3.Error as exc:
            raise self.translate(exc) from None

    # -- API calls per tenant and day (vendors with a daily quota) ------------
    def calls_today(self, tenant: str) -> int:
        """API calls this user's runs made to ``tenant`` today (local day)."""
        row = self.db.execute("SELECT count FROM calls WHERE tenant = ? AND day = ?", (tenant, _today())).fetchone()
        return int(row[0]) if row else 0

    def add_calls(self, tenant: str, count: int, day: str | None = None) -> None:
        """Count ``count`` more API calls to ``tenant`` on ``day`` (YYYY-MM-DD, local; default today)."""
        if count <= 0:
            return
        with self._tx():
            self.db.execute(
                "INSERT INTO calls (tenant, day, count) VALUES (?, ?, ?)"
                " ON CONFLICT (tenant, day) DO UPDATE SET count = count + excluded.count",
                (tenant, day or _today(), count),
            )

    # -- the lock per job ---------------------------------------------------
    def lock(self, identity: str) -> LockHolder | None:
        """Take the job's lock for this process; the holder if another live process has it.

        A lock left by a process that is gone (killed, crashed) is taken over."""
        me = os.getpid()
        host = socket.gethostname()
        with self._tx():
            row = self.db.execute(
                "SELECT run_id, pid, host, started FROM locks WHERE identity = ?", (identity,)
            ).fetchone()
            if row is not None:
                holder = LockHolder(*row)
                if holder.pid != me and (holder.host != host or _alive(holder.pid, holder.started)):
                    return holder
            self.db.execute(
                "INSERT OR REPLACE INTO locks (identity, run_id, pid, host, started) VALUES (?,?,?,?,?)",
                (identity, None, me, host, time.time()),
            )
        return None

    def lock_run(self, identity: str, run_id: int) -> None:
        """Say which run the lock holder is working on."""
        self.db.execute("UPDATE locks SET run_id = ? WHERE identity = ? AND pid = ?", (run_id, identity, os.getpid()))

    def unlock(self, identity: str) -> None:
        self.db.execute("DELETE FROM locks WHERE identity = ? AND pid = ?", (identity, os.getpid()))


class _Connection:
    """An SQLite connection whose errors arrive as one-sentence ``JournalError``s."""

    def __init__(self, db: sqlite3.Connection, journal: Journal) -> None:
        self._db = db
        self._journal = journal

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise self._journal.translate(exc) from None

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        try:
            return self._db.executemany(sql, parameters)
        except sqlite3.Error as exc:
            raise self._journal.translate(exc) from None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _alive(pid: int, since: float) -> bool:
    """Whether the process with this id that took a lock at ``since`` is still running (on this host).

    A process that started after ``since`` merely got the id again (after a reboot, say)."""
    if pid <= 0:
        return False
    started = _process_start(pid)
    if started is not None and started > since + 1:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would end the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _process_start(pid: int) -> float | None:
    """When a process started (epoch seconds), where the system tells (Linux); else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            ticks = int(stat_file.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


#: a row's key as :meth:`Journal.counts` names it: its status once done, else its state
_ROW_KEY = "CASE WHEN state = 'done' AND status IS NOT NULL THEN status ELSE state END"


def _row_filter(run_id: int, keys: Collection[str], search: str) -> tuple[str, tuple[Any, ...]]:
    where = "run_id = ?"
    parameters: list[Any] = [run_id]
    if keys:
        where += f" AND {_ROW_KEY} IN ({', '.join('?' * len(keys))})"
        parameters += sorted(keys)
    if search.strip():
        # LIKE ignores ASCII case: a serial or an e-mail typed in another case is found too
        pattern = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where += " AND (label LIKE ? ESCAPE '\\' OR cells LIKE ? ESCAPE '\\')"
        parameters += [pattern, pattern]
    return where, tuple(parameters)


def _today() -> str:
    return time.strftime("%Y-%m-%d")


_ROW_COLUMNS = "idx, cells, state, status, detail, http_status, attempts, resolved, action, label, reason"


def _spans(indices: Iterable[int]) -> list[tuple[int, int]]:
    """``indices`` as (first, last) runs of consecutive numbers, in order."""
    ordered = sorted(indices)
    if not ordered:
        return []
    spans = []
    first = last = ordered[0]
    for i in ordered:
        if i > last + 1:
            spans.append((first, last))
            first = i
        last = i
    spans.append((first, last))
    return spans


def row_reason(state: str, code: str | None, status: str | None) -> Reason:
    """Why a row ended as it did, from its state, stored reason code and status."""
    # a row in flight may have gone out again after an earlier outcome: that outcome no longer holds
    return Reason.NO_ANSWER if state == IN_FLIGHT else _reason(code, status)


def _record(values: Sequence[Any]) -> RowRecord:
    idx, cells, state, status, detail, http_status, attempts, resolved, action, label, code = values
    reason = row_reason(state, code, status)
    return RowRecord(idx, _loads(cells), state, status, detail, http_status, attempts, resolved, action, label, reason)
