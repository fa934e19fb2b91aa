"""The controller's state in an embedded SQLite file, so a restarted controller loses no job.

Jobs (with their keys), their placements and joined workers, and the registered switches. Messages are
stored as their protobuf bytes next to the columns that are queried. One connection, guarded by a lock
(the gRPC server calls from several threads); every change is one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netagg.protocol import format_key, parse_key
from netagg.v1 import control_pb2 as pb

__all__ = ["Member", "Store", "SwitchRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS switches (
    switch_id     TEXT PRIMARY KEY,
    data_address  TEXT NOT NULL,
    agent_address TEXT NOT NULL,
    info          BLOB NOT NULL,      -- netagg.v1.SwitchInfo
    agent_token   TEXT NOT NULL,      -- what the controller calls the SwitchAgent with
    registered    REAL NOT NULL,
    parent        TEXT NOT NULL DEFAULT ''  -- the switch above it in the fabric
);
CREATE TABLE IF NOT EXISTS jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    job_id        TEXT NOT NULL UNIQUE,
    wire_job_id   INTEGER NOT NULL UNIQUE,
    owner         TEXT NOT NULL,
    spec          BLOB NOT NULL,      -- netagg.v1.JobSpec, defaults filled in
    create_time   REAL NOT NULL,
    job_key       TEXT NOT NULL DEFAULT ''  -- 16 hex digits (docs/protocol.md "Job keys"); '' = none
);
CREATE TABLE IF NOT EXISTS placements (
    job_id        TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    switch_id     TEXT NOT NULL,
    slot_base     INTEGER NOT NULL,
    slots         INTEGER NOT NULL,
    parent        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS members (
    job_id        TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    rank          INTEGER NOT NULL,
    address       TEXT NOT NULL,
    has_left      INTEGER NOT NULL DEFAULT 0,  -- 1 after LeaveJob (the address stays, as pinned)
    PRIMARY KEY (job_id, rank)
);
"""


@dataclass(frozen=True)
class SwitchRecord:
    """A registered switch: where its data plane and its SwitchAgent are, what it takes, its parent."""

    switch_id: str
    data_address: str
    agent_address: str
    info: pb.SwitchInfo
    agent_token: str
    parent: str = ""


@dataclass(frozen=True)
class Member:
    """A worker that joined a job: its rank, the data-plane address it sends from, whether it left."""

    rank: int
    address: str
    left: bool = False


class Store:
    """SQLite-backed state. ``path`` may be ``":memory:"`` (for tests that need no restart)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # It holds the tokens the controller calls switches with: readable by its owner only.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            # columns added since the first version, for files made before them
            for table, column, decl in (
                ("switches", "parent", "TEXT NOT NULL DEFAULT ''"),  # aggregation trees
                ("jobs", "job_key", "TEXT NOT NULL DEFAULT ''"),  # job keys: older jobs have none
                ("members", "has_left", "INTEGER NOT NULL DEFAULT 0"),  # LeaveJob
            ):
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change (the lock is held throughout, so check-then-write is safe)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock across several calls (reads and a later transaction)."""
        with self._lock:
            yield

    # -- switches ------------------------------------------------------------------------------
    def put_switch(self, rec: SwitchRecord, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO switches (switch_id, data_address, agent_address, info, agent_token, "
                "registered, parent) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(switch_id) DO UPDATE SET "
                "data_address = excluded.data_address, agent_address = excluded.agent_address, "
                "info = excluded.info, agent_token = excluded.agent_token, parent = excluded.parent",
                (
                    rec.switch_id,
                    rec.data_address,
                    rec.agent_address,
                    rec.info.SerializeToString(),
                    rec.agent_token,
                    now,
                    rec.parent,
                ),
            )

    def switches(self) -> list[SwitchRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT switch_id, data_address, agent_address, info, agent_token, parent FROM switches "
                "ORDER BY registered, switch_id"
            ).fetchall()
        return [SwitchRecord(r[0], r[1], r[2], pb.SwitchInfo.FromString(r[3]), r[4], r[5]) for r in rows]

    def switch(self, switch_id: str) -> SwitchRecord | None:
        return next((s for s in self.switches() if s.switch_id == switch_id), None)

    def used_ranges(self, switch_id: str) -> list[tuple[int, int]]:
        """Slot ranges [lo, hi) given to jobs on a switch, ascending."""
        with self._lock:
            rows = self._db.execute(
                "SELECT slot_base, slots FROM placements WHERE switch_id = ? ORDER BY slot_base", (switch_id,)
            ).fetchall()
        return [(b, b + n) for b, n in rows]

    # -- jobs ----------------------------------------------------------------------------------
    def add_job(self, job: pb.Job, key: int = 0) -> None:
        """Store ``job`` and its placements, with its ``key`` (0: none)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (job_id, wire_job_id, owner, spec, create_time, job_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.wire_job_id,
                    job.owner,
                    job.spec.SerializeToString(),
                    job.create_time,
                    format_key(key) if key else "",
                ),
            )
            for p in job.placements:
                db.execute(
                    "INSERT INTO placements VALUES (?, ?, ?, ?, ?)",
                    (job.job_id, p.switch_id, p.slot_base, p.slots, p.parent_switch_id),
                )

    def delete_job(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def job_key(self, job_id: str) -> int:
        """The job's key (0 if it has none, or no such job)."""
        with self._lock:
            row = self._db.execute("SELECT job_key FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return parse_key(row[0]) if row and row[0] else 0

    def wire_ids(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT wire_job_id FROM jobs")}

    def jobs(self, job_ids: list[str] | None = None) -> list[pb.Job]:
        """Jobs (all, or those named), oldest first, with placements and joined ranks (those that have
        not left). Their state as the store knows it: running when every rank is joined, idle when
        every rank that joined has left, pending otherwise (the servicer adds what the switches say)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, wire_job_id, owner, spec, create_time FROM jobs ORDER BY seq"
            ).fetchall()
            out = []
            for job_id, wire, owner, spec, created in rows:
                if job_ids is not None and job_id not in job_ids:
                    continue
                job = pb.Job(
                    job_id=job_id,
                    wire_job_id=wire,
                    owner=owner,
                    spec=pb.JobSpec.FromString(spec),
                    create_time=created,
                )
                for sw, base, n, parent in self._db.execute(
                    "SELECT switch_id, slot_base, slots, parent FROM placements WHERE job_id = ?", (job_id,)
                ):
                    job.placements.add(switch_id=sw, slot_base=base, slots=n, parent_switch_id=parent)
                rows = self._db.execute(
                    "SELECT rank, has_left FROM members WHERE job_id = ? ORDER BY rank", (job_id,)
                ).fetchall()
                ranks = [r for r, left in rows if not left]
                job.joined_ranks.extend(ranks)
                if len(ranks) == job.spec.workers:
                    job.state = pb.JOB_STATE_RUNNING
                elif rows and not ranks:
                    job.state = pb.JOB_STATE_IDLE
                else:
                    job.state = pb.JOB_STATE_PENDING
                out.append(job)
        return out

    def job(self, job_id: str) -> pb.Job | None:
        found = self.jobs([job_id])
        return found[0] if found else None

    def member(self, job_id: str, rank: int) -> Member | None:
        with self._lock:
            row = self._db.execute(
                "SELECT rank, address, has_left FROM members WHERE job_id = ? AND rank = ?", (job_id, rank)
            ).fetchone()
        return Member(row[0], row[1], bool(row[2])) if row else None

    def put_member(self, job_id: str, rank: int, address: str) -> None:
        """Record that ``rank`` joined from ``address`` (again, after a leave)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO members (job_id, rank, address, has_left) VALUES (?, ?, ?, 0) "
                "ON CONFLICT(job_id, rank) DO UPDATE SET address = excluded.address, has_left = 0",
                (job_id, rank, address),
            )

    def leave_member(self, job_id: str, rank: int, address: str) -> bool:
        """Mark ``rank`` as left if it is joined from ``address``; whether it was."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE members SET has_left = 1 WHERE job_id = ? AND rank = ? AND address = ? "
                "AND has_left = 0",
                (job_id, rank, address),
            )
            return cur.rowcount == 1
