"""The only module that speaks SQL. One SQLite file (WAL), a versioned schema, checked transitions."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from backend.core import defaults, paths
from backend.core.errors import CANCELLED
from backend.core.job import Job
from backend.core.registry import Entry, RegistryType
from backend.core.states import ACTIVE, JobState, check

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
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL DEFAULT '',
        must_change INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        lang TEXT NOT NULL DEFAULT '',
        max_running INTEGER,
        max_queued INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_action ON audit(action, at)
    """,
    "ALTER TABLE users ADD COLUMN max_gpu_hours REAL",
    # every registry row has an owner: the job that made it says whose it is, else the operator's ('(operator)',
    # users.OPERATOR_NAME), shared with the class; sharing is a flag on the row
    """
    ALTER TABLE registry ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
    UPDATE registry SET owner='(operator)', shared=1 WHERE length(owner)=0 AND json_extract(meta, '$.source') IN ('bundled', 'sample');
    UPDATE registry SET owner=(SELECT jobs.owner FROM jobs WHERE jobs.id=registry.job_id)
        WHERE length(owner)=0 AND COALESCE((SELECT jobs.owner FROM jobs WHERE jobs.id=registry.job_id), '')!='';
    UPDATE registry SET owner='(operator)', shared=1 WHERE length(owner)=0
    """,
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        requests INTEGER NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        revoked_at REAL
    )
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


class CorruptStore(RuntimeError):
    """The database file exists but SQLite cannot read it (not a database, malformed, unreadable)."""

    def __init__(self, path: Path, error: str):
        super().__init__(f"the workspace database {path} cannot be read ({error})")
        self.path, self.error = path, error


class Taken(ValueError):
    """A registry name another owner holds: ``put`` never changes a row's owner."""

    def __init__(self, type: str, name: str, owner: str):
        super().__init__(f"{type} {name!r} belongs to {owner}")
        self.type, self.name, self.owner = type, name, owner


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        paths.private_workspace(self.path)
        try:
            self._migrate()
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise CorruptStore(self.path, str(e)) from None

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

    def job(self, job_id: int) -> Job | None:
        if not isinstance(job_id, int) or not 0 < job_id < 2 ** 63:     # past SQLite's INTEGER: no such job
            return None
        row = self._one("SELECT * FROM jobs WHERE id=?", (job_id,))
        return Job.from_row(row) if row else None

    @staticmethod
    def _job_filter(states=None, kind: str | None = None, owner: str | None = None,
                    owners: list[str] | None = None) -> tuple[str, list]:
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
        if owners is not None:
            where.append(f"owner IN ({','.join('?' * len(owners))})")
            args += owners
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def jobs(self, states=None, kind: str | None = None, owner: str | None = None, limit: int = 500,
             offset: int = 0, owners: list[str] | None = None) -> list[Job]:
        where, args = self._job_filter(states, kind, owner, owners)
        return self._jobs(f"SELECT * FROM jobs{where} ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset))

    def count_jobs(self, states=None, kind: str | None = None, owner: str | None = None,
                   owners: list[str] | None = None) -> int:
        where, args = self._job_filter(states, kind, owner, owners)
        return self._one(f"SELECT COUNT(*) AS n FROM jobs{where}", args)["n"]

    def _jobs(self, sql: str, args=()) -> list[Job]:
        return [Job.from_row(r) for r in self._all(sql, args)]

    def queued(self) -> list[Job]:
        """Queued jobs in the order they should be considered: priority, then age."""
        return self._jobs("SELECT * FROM jobs WHERE state='queued' ORDER BY priority DESC, id ASC")

    def active(self) -> list[Job]:
        return self._jobs("SELECT * FROM jobs WHERE state IN ('starting','running') ORDER BY id")

    def transition(self, job_id: int, new: JobState | str, **fields) -> Job:
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

    def exclusive(self, fn):
        """``fn()`` while this database's write lock is held: no job is claimed and no row written until it returns
        (a check-then-act on the files jobs read, such as a model's folder swap). Keep ``fn`` short."""
        return self._run(lambda con: fn())

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

    def request_cancel(self, job_id: int) -> Job:
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

    def usage_since(self, since: float, weighted: bool = False, now: float | None = None) -> dict[str, float]:
        """Seconds each owner's jobs have run between ``since`` and ``now`` (default: the clock; running ones up to
        ``now``): for fair share. Weighted: each job's seconds times the ``weight`` its placement recorded in
        ``given`` (resources.place)."""
        now = time.time() if now is None else now
        weight = "COALESCE(json_extract(given, '$.weight'), 0)" if weighted else "1"
        rows = self._all(f"SELECT owner, SUM((MIN(COALESCE(finished_at, ?), ?) - MAX(started_at, ?)) * {weight}) AS s"
                         " FROM jobs WHERE started_at IS NOT NULL AND COALESCE(finished_at, ?) >= ? AND started_at < ?"
                         " GROUP BY owner", (now, now, since, now, since, now))
        return {r["owner"]: r["s"] for r in rows}

    def job_owners(self) -> dict[int, str]:
        """Every job's owner by id (the disk quota counts each job folder as its owner's)."""
        return {r["id"]: r["owner"] for r in self._all("SELECT id, owner FROM jobs")}

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
    def put(self, type: RegistryType | str, name: str, path: str = "", meta: dict | None = None, job_id: int | None = None,
            *, owner: str, shared: bool = False) -> Entry:
        """Add an entry, or update its path, meta and job when ``owner`` already holds it (its owner and its
        ``shared`` flag never change here: ``set_shared``). Raises ``Taken`` when another owner holds the name."""
        if not owner:
            raise ValueError(f"registry {type} {name!r}: an entry needs an owner")
        type = RegistryType(type).value

        def tx(con):
            con.execute(
                "INSERT INTO registry(type, name, path, meta, job_id, owner, shared, created_at) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(type, name) DO UPDATE SET path=excluded.path, meta=excluded.meta,"
                " job_id=excluded.job_id WHERE registry.owner=excluded.owner",
                (type, name, str(path), json.dumps(meta or {}), job_id, owner, int(shared), time.time()))
            return con.execute("SELECT owner FROM registry WHERE type=? AND name=?", (type, name)).fetchone()[0]
        held = self._run(tx)
        if held != owner:
            raise Taken(type, name, held)
        return self.get(type, name)

    def set_shared(self, type: RegistryType | str, name: str, shared: bool) -> bool:
        return self._run(lambda con: con.execute("UPDATE registry SET shared=? WHERE type=? AND name=?",
                                                 (int(shared), RegistryType(type).value, name)).rowcount == 1)

    def get(self, type: RegistryType | str, name: str) -> Entry | None:
        row = self._one("SELECT * FROM registry WHERE type=? AND name=?", (RegistryType(type).value, name))
        return Entry.from_row(row) if row else None

    def items(self, type: RegistryType | str) -> list[Entry]:
        return [Entry.from_row(r) for r in self._all(
            "SELECT * FROM registry WHERE type=? ORDER BY created_at DESC, id DESC", (RegistryType(type).value,))]

    def delete(self, type: RegistryType | str, name: str, job_id: int | None = None) -> bool:
        """Remove an entry; with ``job_id``, only if that job still owns it (a server job cleaning up
        must not remove a successor's endpoint of the same name)."""
        sql, args = "DELETE FROM registry WHERE type=? AND name=?", [RegistryType(type).value, name]
        if job_id is not None:
            sql, args = sql + " AND job_id=?", args + [job_id]
        return self._run(lambda con: con.execute(sql, args).rowcount == 1)


    # -- accounts, sessions and the audit log (backend/access/users.py decides; this only stores) --
    USER_FIELDS = ("role", "password_hash", "must_change", "disabled", "lang", "max_running", "max_queued",
                   "max_gpu_hours")

    def add_user(self, name: str, role: str, password_hash: str) -> None:
        """Raises sqlite3.IntegrityError when the name is taken."""
        self._run(lambda con: con.execute(
            "INSERT INTO users(name, role, password_hash, created_at) VALUES (?,?,?,?)",
            (name, role, password_hash, time.time())))

    def user(self, name: str) -> dict | None:
        return self._one("SELECT * FROM users WHERE name=?", (name,))

    def users(self) -> list[dict]:
        return self._all("SELECT * FROM users ORDER BY role, name")

    def update_user(self, name: str, **fields) -> bool:
        assert set(fields) <= set(self.USER_FIELDS), fields
        return self._run(lambda con: con.execute(
            f"UPDATE users SET {', '.join(f'{k}=?' for k in fields)} WHERE name=?",
            (*fields.values(), name)).rowcount == 1)

    def add_session(self, sid: str, user: str, expires_at: float) -> None:
        self._run(lambda con: con.execute(
            "INSERT INTO sessions(id, user, created_at, expires_at) VALUES (?,?,?,?)",
            (sid, user, time.time(), expires_at)))

    def session(self, sid: str) -> dict | None:
        """A live session: not revoked, not expired."""
        return self._one("SELECT * FROM sessions WHERE id=? AND revoked_at IS NULL AND expires_at>?",
                         (sid, time.time()))

    def revoke_sessions(self, sid: str | None = None, user: str | None = None, keep: str | None = None) -> int:
        """End one session, or every session of ``user`` (a reset or a disabled account) but ``keep``'s."""
        col, value = ("id", sid) if sid is not None else ("user", user)
        return self._run(lambda con: con.execute(
            f"UPDATE sessions SET revoked_at=? WHERE {col}=? AND revoked_at IS NULL AND id IS NOT ?",
            (time.time(), value, keep)).rowcount)

    # -- API keys (backend/access/apikeys.py decides; only their hashes are stored) --
    def add_api_key(self, owner: str, name: str, hash_: str, prefix: str) -> int:
        return self._run(lambda con: con.execute(
            "INSERT INTO api_keys(owner, name, hash, prefix, created_at) VALUES (?,?,?,?,?)",
            (owner, name, hash_, prefix, time.time())).lastrowid)

    def api_keys(self, owner: str | None = None) -> list[dict]:
        """Every key (``owner``: one person's), revoked ones too, newest first."""
        where, args = ("WHERE owner=?", (owner,)) if owner is not None else ("", ())
        return self._all(f"SELECT * FROM api_keys {where} ORDER BY id DESC", args)

    def api_key(self, key_id: int | None = None, hash_: str | None = None) -> dict | None:
        col, value = ("id", key_id) if key_id is not None else ("hash", hash_)
        return self._one(f"SELECT * FROM api_keys WHERE {col}=?", (value,))

    def revoke_api_key(self, key_id: int) -> bool:
        return self._run(lambda con: con.execute(
            "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (time.time(), key_id)).rowcount == 1)

    def use_api_key(self, key_id: int, tokens: int = 0) -> None:
        """One more request (and its tokens) on a key's usage."""
        self._run(lambda con: con.execute(
            "UPDATE api_keys SET requests=requests+1, tokens=tokens+?, last_used_at=? WHERE id=?",
            (tokens, time.time(), key_id)))

    def audit(self, actor: str, action: str, target: str = "", address: str = "", detail: str = "") -> None:
        """Append to the audit log; nothing updates or deletes its rows."""
        self._run(lambda con: con.execute(
            "INSERT INTO audit(at, actor, action, target, address, detail) VALUES (?,?,?,?,?,?)",
            (time.time(), actor, action, target, address, detail)))

    def audit_rows(self, action: str | None = None, since: float = 0, limit: int = 1000) -> list[dict]:
        where, args = "at>=?", [since]
        if action:
            where, args = where + " AND action=?", args + [action]
        return self._all(f"SELECT * FROM audit WHERE {where} ORDER BY id DESC LIMIT ?", (*args, limit))

    def audit_actors(self, action: str) -> set[str]:
        """Everyone the audit log records doing ``action`` at least once."""
        return {r["actor"] for r in self._all("SELECT DISTINCT actor FROM audit WHERE action=?", (action,))}

    def last_activity(self) -> dict[str, float]:
        """When each actor last did something the audit log records."""
        return {r["actor"]: r["t"] for r in self._all("SELECT actor, MAX(at) AS t FROM audit GROUP BY actor")}

    def count_audit(self, action: str, since: float, target: str | None = None, address: str | None = None) -> int:
        """How many ``action`` rows since ``since`` for one target and/or one address (login throttling)."""
        sql, args = "SELECT COUNT(*) AS n FROM audit WHERE action=? AND at>=?", [action, since]
        if target is not None:
            sql, args = sql + " AND target=?", args + [target]
        if address is not None:
            sql, args = sql + " AND address=?", args + [address]
        return self._one(sql, args)["n"]


_stores: dict[Path, Store] = {}


def open_store(home: Path) -> Store:
    """The store of a workspace (default: WORKBENCH_HOME), created and migrated on first use."""
    path = home / "workbench.db"
    if path not in _stores:
        _stores[path] = Store(path)
    return _stores[path]
