"""The only module that speaks SQL. One SQLite file (WAL), a versioned schema, checked transitions."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from backend import defaults
from backend.errors import CANCELLED
from backend.states import ACTIVE, JobState, check

# Each entry upgrades the schema by one version (PRAGMA user_version). Never edit a released one.
MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        asked TEXT NOT NULL,
        given TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        label TEXT NOT NULL DEFAULT '',
        parent_id INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        worker_id TEXT,
        pid INTEGER,
        heartbeat_at REAL,
        exit_code INTEGER,
        error_class TEXT,
        error_message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state, priority, id);
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        resources TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE registry (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL DEFAULT '',
        meta TEXT NOT NULL DEFAULT '{}',
        job_id INTEGER,
        owner TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        UNIQUE(type, name)
    );
    """,
]

JSON_FIELDS = ("spec", "asked", "given", "meta", "resources")
RETRIES = 20


def _row(cur, row) -> dict:
    d = {c[0]: v for c, v in zip(cur.description, row)}
    for k in JSON_FIELDS:
        if k in d and isinstance(d[k], str):
            d[k] = json.loads(d[k])
    return d


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=defaults.DB_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={defaults.DB_BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    def _run(self, fn, write: bool = True):
        """Run ``fn(con)`` in one transaction (BEGIN IMMEDIATE for writes), retrying while locked."""
        delay = 0.01
        for attempt in range(RETRIES):
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                out = fn(con)
                con.execute("COMMIT")
                return out
            except sqlite3.OperationalError as e:
                con.rollback() if con.in_transaction else None
                if ("locked" not in str(e) and "busy" not in str(e)) or attempt == RETRIES - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except BaseException:
                if con.in_transaction:
                    con.rollback()
                raise
            finally:
                con.close()

    def _all(self, sql: str, args=()) -> list[dict]:
        def q(con):
            cur = con.execute(sql, args)
            return [_row(cur, r) for r in cur.fetchall()]
        return self._run(q, write=False)

    def _one(self, sql: str, args=()) -> dict | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _migrate(self) -> None:
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()

        def up(con):
            version = con.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for stmt in filter(str.strip, script.split(";")):
                    con.execute(stmt)
                con.execute(f"PRAGMA user_version={i}")
        self._run(up)

    @property
    def version(self) -> int:
        con = self._connect()
        try:
            return con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()

    # -- jobs -----------------------------------------------------------------------------
    def insert_job(self, kind: str, owner: str, spec: dict, asked: dict, priority: int = 0,
                   label: str = "", parent_id: int | None = None, prepare=None) -> int:
        """Queue a job; ``prepare(job_id)`` runs before the row is committed (no worker can claim it
        yet), and an exception from it leaves no row."""
        def tx(con):
            job_id = con.execute(
                "INSERT INTO jobs(kind, owner, state, spec, asked, priority, label, parent_id, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (kind, owner, JobState.QUEUED.value, json.dumps(spec), json.dumps(asked), priority, label,
                 parent_id, time.time())).lastrowid
            if prepare:
                prepare(job_id)
            return job_id
        return self._run(tx)

    def job(self, job_id: int) -> dict | None:
        return self._one("SELECT * FROM jobs WHERE id=?", (job_id,))

    def jobs(self, states=None, kind: str | None = None, owner: str | None = None, limit: int = 500) -> list[dict]:
        where, args = [], []
        if states:
            states = [JobState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if kind:
            where.append("kind=?")
            args.append(kind)
        if owner:
            where.append("owner=?")
            args.append(owner)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return self._all(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))

    def queued(self) -> list[dict]:
        """Queued jobs in the order they should be considered: priority, then age."""
        return self._all("SELECT * FROM jobs WHERE state='queued' ORDER BY priority DESC, id ASC")

    def active(self) -> list[dict]:
        return self._all("SELECT * FROM jobs WHERE state IN ('starting','running') ORDER BY id")

    def transition(self, job_id: int, new: JobState | str, **fields) -> dict:
        """Move a job to ``new`` (checked against the transition table) and set ``fields``, atomically."""
        new = JobState(new)

        def tx(con):
            row = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id}")
            check(row[0], new)
            now = time.time()
            if new == JobState.RUNNING:
                fields.setdefault("heartbeat_at", now)
            if new.finished:
                fields.setdefault("finished_at", now)
            self._set(con, job_id, state=new.value, **fields)
        self._run(tx)
        return self.job(job_id)

    @staticmethod
    def _set(con, job_id: int, **fields) -> None:
        fields = {k: json.dumps(v) if k in JSON_FIELDS and v is not None else v for k, v in fields.items()}
        con.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), job_id))

    def claim(self, job_id: int, worker_id: str, given: dict) -> bool:
        """Atomically take a queued job for a worker (queued → starting, through the transition check);
        False if someone else took or cancelled it first."""
        def tx(con):
            row = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[0] != JobState.QUEUED.value:
                return False
            check(row[0], JobState.STARTING)
            self._set(con, job_id, state=JobState.STARTING.value, worker_id=worker_id, given=given,
                      started_at=time.time())
            return True
        return self._run(tx)

    def update_job(self, job_id: int, **fields) -> None:
        """Set fields that are not the state (pid, heartbeat, priority, cancel flag...)."""
        if "state" in fields:
            raise ValueError("a job's state changes only through transition()")
        self._run(lambda con: self._set(con, job_id, **fields))

    def heartbeat_jobs(self, job_ids: list[int]) -> None:
        if job_ids:
            self._run(lambda con: con.execute(
                f"UPDATE jobs SET heartbeat_at=? WHERE id IN ({','.join('?' * len(job_ids))})",
                (time.time(), *job_ids)))

    def request_cancel(self, job_id: int) -> dict:
        """Cancel: a queued job ends at once; an active one is flagged for its worker."""
        def tx(con):
            row = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id}")
            if row[0] == JobState.QUEUED.value:
                check(row[0], JobState.CANCELLED)
                self._set(con, job_id, state=JobState.CANCELLED.value, finished_at=time.time(),
                          error_class=CANCELLED, error_message="cancelled before it started")
            elif JobState(row[0]) in ACTIVE:
                self._set(con, job_id, cancel_requested=1)
        self._run(tx)
        return self.job(job_id)

    def counts(self) -> dict[str, int]:
        rows = self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, pid: int, host: str, resources: dict) -> None:
        now = time.time()
        self._run(lambda con: con.execute(
            "INSERT OR REPLACE INTO workers(id, pid, host, started_at, heartbeat_at, resources) VALUES (?,?,?,?,?,?)",
            (worker_id, pid, host, now, now, json.dumps(resources))))

    def worker_heartbeat(self, worker_id: str, resources: dict) -> None:
        self._run(lambda con: con.execute("UPDATE workers SET heartbeat_at=?, resources=? WHERE id=?",
                                          (time.time(), json.dumps(resources), worker_id)))

    def remove_worker(self, worker_id: str) -> None:
        self._run(lambda con: con.execute("DELETE FROM workers WHERE id=?", (worker_id,)))

    def workers(self) -> list[dict]:
        return self._all("SELECT * FROM workers ORDER BY heartbeat_at DESC")

    # -- registry: models, adapters, datasets, endpoints, eval runs -----------------------
    def put(self, type: str, name: str, path: str = "", meta: dict | None = None, job_id: int | None = None,
            owner: str = "") -> dict:
        self._run(lambda con: con.execute(
            "INSERT INTO registry(type, name, path, meta, job_id, owner, created_at) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(type, name) DO UPDATE SET path=excluded.path, meta=excluded.meta,"
            " job_id=excluded.job_id, owner=excluded.owner",
            (type, name, str(path), json.dumps(meta or {}), job_id, owner, time.time())))
        return self.get(type, name)

    def get(self, type: str, name: str) -> dict | None:
        return self._one("SELECT * FROM registry WHERE type=? AND name=?", (type, name))

    def items(self, type: str) -> list[dict]:
        return self._all("SELECT * FROM registry WHERE type=? ORDER BY created_at DESC, id DESC", (type,))

    def delete(self, type: str, name: str, job_id: int | None = None) -> bool:
        """Remove an entry; with ``job_id``, only if that job still owns it (a server job cleaning up
        must not remove a successor's endpoint of the same name)."""
        sql, args = "DELETE FROM registry WHERE type=? AND name=?", [type, name]
        if job_id is not None:
            sql, args = sql + " AND job_id=?", args + [job_id]
        return self._run(lambda con: con.execute(sql, args).rowcount == 1)


_stores: dict[Path, Store] = {}


def open_store(home: Path | None = None) -> Store:
    """The store of a workspace (default: WORKBENCH_HOME), created and migrated on first use."""
    path = (home or defaults.home()) / "workbench.db"
    if path not in _stores:
        _stores[path] = Store(path)
    return _stores[path]
