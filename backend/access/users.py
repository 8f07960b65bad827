"""Who is acting: accounts and roles, logins and sessions, the audit log, and who may do what.

WORKBENCH_AUTH picks the mode:
- ``none`` (default): one person on 127.0.0.1, no login; a name typed in the sidebar is declared, not
  proven (names in WORKBENCH_INSTRUCTORS act as instructors). Everybody sees everything.
- ``accounts``: class mode. Accounts live in the store (``python -m backend users ...``); passwords are
  hashed with argon2id (argon2-cffi); a login gives a signed, expiring token (itsdangerous, secret in
  ``<workspace>/secret.key``, mode 0600) naming a server-side session that Logout revokes.
- ``header``: a proxy in front (oauth2-proxy, nginx auth_request, JupyterHub) logs people in and names
  them in WORKBENCH_AUTH_HEADER; the header is believed only with the shared secret only the proxy sets
  (WORKBENCH_AUTH_PROXY_SECRET in the ``X-Workbench-Proxy-Secret`` header, compared in constant time) and
  only from WORKBENCH_TRUSTED_PROXIES (the TCP peer: X-Forwarded-For is never read).

Backend functions take the acting ``User`` and refuse what it may not do (``Refused``, a readable
message); pages pass the logged-in user and never decide permissions themselves.
"""
from __future__ import annotations

import csv
import functools
import hmac
import ipaddress
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backend.core import defaults, paths
from backend.core.errors import UserError
from backend.core.store import open_store

ROLES = ("student", "instructor")
MODES = ("none", "accounts", "header")
NAME = re.compile(r"(?!\.\.?$)[\w.-]{1,32}")        # letters (any script), digits, . _ -
MIN_PASSWORD = 8
ADDRESS_FAILS_FACTOR = 4                     # an address (a classroom NAT) may fail this many times an account's limit
COOKIE = "workbench_session"
LOOPBACK = {"", "127.0.0.1", "::1"}          # not throttled per address: a whole class tunnels in from here


@functools.cache
def _hasher():
    """argon2id with the library's current recommended parameters. argon2-cffi and itsdangerous are imported
    where they are used, not at the top: jobs in engine environments (lagent, opencompass) import this module
    through the permission checks but never log anyone in, and those environments don't carry them."""
    from argon2 import PasswordHasher
    return PasswordHasher()


_HASHING = threading.BoundedSemaphore(defaults.PASSWORD_HASHES_AT_ONCE)


def _hash(password: str) -> str:
    with _HASHING:            # each argon2 hash takes its memory_cost (64 MiB): only so many at once
        return _hasher().hash(password)


class Refused(UserError):
    """What the acting user may not do, or a login that failed; a message key and fields for the user."""


class Throttled(Refused):
    """Too many failed logins lately for this account or address."""


@dataclass(frozen=True)
class User:
    name: str
    role: str = "student"
    lang: str = ""
    must_change: bool = False

    @property
    def instructor(self) -> bool:
        """Instructors, and the operator's shell, may see and change everything."""
        return self.role in ("instructor", "operator")


OPERATOR_NAME = "(operator)"    # the operator's name in rows and the audit log: owner of the bundled model and samples
                                # (shared with the class); no account can take it (NAME has no parentheses)
OPERATOR = User(OPERATOR_NAME, "operator")    # the operator's shell (CLI, worker, launcher): may do anything; every
                                              # call names its actor, so a forgotten one is an error, never the operator
Actor = User | str             # who acts: a User, or a name looked up in the workspace (an account, or declared)


def mode() -> str:
    m = defaults.setting("AUTH").strip().lower()
    if m not in MODES:
        raise ValueError(f"WORKBENCH_AUTH must be one of {', '.join(MODES)}, not {m!r}")
    return m


def declared_instructors() -> set[str]:
    """WORKBENCH_INSTRUCTORS: names that act as instructors when there are no accounts."""
    return {n.strip() for n in defaults.setting("INSTRUCTORS").split(",") if n.strip()}


def acting(who: Actor, home: Path) -> User:
    """The acting user from what a caller passed: a User (``OPERATOR`` for the operator's shell), or a name:
    an account in ``home``'s workspace, or declared (AUTH=none)."""
    if isinstance(who, User):
        return who
    if not isinstance(who, str):
        raise TypeError(f"the acting user must be a User or a name, not {who!r} (OPERATOR for the operator)")
    if mode() != "none":
        row = open_store(home).user(who)
        return _user(row) if row and not row["disabled"] else User(who, "student")
    return User(who, "instructor" if who in declared_instructors() else "student")


def may_manage(owner: str, who: Actor, home: Path) -> bool:
    """Owner, instructor or the operator's shell."""
    user = acting(who, home)
    return user.instructor or user.name == owner


def may_see(owner: str, who: Actor, home: Path) -> bool:
    """With accounts, a student sees only their own things (and shared ones, ``owner == ''``); without, all."""
    return may_manage(owner, who, home) or owner == "" or mode() == "none"


def is_instructor(name: str, home: Path) -> bool:
    """Whether ``name`` acts as an instructor (an account's role; without accounts, WORKBENCH_INSTRUCTORS)."""
    return bool(name) and acting(name, home).instructor


def may_use(thing, who: Actor, home: Path) -> bool:
    """The one use rule, for every registry type (dataset, model, adapter, endpoint, eval), drafts and gallery
    images: listing, opening, serving, evaluating, merging, quantizing, deploying, fine-tuning. A student may use
    their own things, shared ones (the row's ``shared`` flag), an instructor's (the class's) and the operator's;
    instructors and the operator's shell use everything; without accounts everybody may. ``thing``: a registry
    entry (anything with ``owner`` and ``shared``) or an owner's name (drafts, images)."""
    owner, shared = (thing, False) if isinstance(thing, str) else (thing.owner, bool(thing.shared))
    return shared or owner == OPERATOR_NAME or may_see(owner, who, home) or is_instructor(owner, home)


def refusal(who: Actor, action: str, target: str, error: Refused, home: Path) -> Refused:
    """Record a refusal in the audit log (in English) and return it, for a caller that goes on (one of many)."""
    audit(actor(who, home), "refused", target, detail=f"{action}: {error}", home=home)
    return error


def refuse(who: Actor, action: str, target: str, error: Refused, home: Path):
    """Record a refusal in the audit log (in English) and raise it (``error``: a Refused with its key)."""
    raise refusal(who, action, target, error, home)


def require_instructor(who: Actor, action: str, target: str, error: Refused, home: Path) -> None:
    if not acting(who, home).instructor:
        refuse(who, action, target, error, home)


def require_owner(who: Actor, owner: str, action: str, target: str, error: Refused, home: Path) -> None:
    """Registry things (models, datasets): their owner or an instructor; shared ones (owner '') an instructor
    only. Without accounts everybody may (names are declared, as before class mode existed)."""
    if not may_change(owner, who, home):
        refuse(who, action, target, error, home)


def may_change(owner: str, who: Actor, home: Path) -> bool:
    user = acting(who, home)
    return user.instructor or bool(owner and owner == user.name) or mode() == "none"


def actor(who: Actor, home: Path) -> str:
    """The name the audit log records for ``who``."""
    return acting(who, home).name


def audit(actor: str, action: str, target: str = "", address: str = "", detail: str = "", *, home: Path) -> None:
    open_store(home).audit(actor, action, str(target), address or "", detail)


def audit_log(action: str | None = None, limit: int = 1000, *, home: Path) -> list[dict]:
    return open_store(home).audit_rows(action, limit=limit)


# -- accounts ---------------------------------------------------------------------------------------
def _user(row: dict) -> User:
    return User(row["name"], row["role"], row["lang"], bool(row["must_change"]))


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError("err.users.role", roles=", ".join(ROLES), role=role)
    return role


def _row(name: str, home: Path) -> dict:
    row = open_store(home).user(name)
    if row is None:
        raise KeyError(f"no account {name!r}")
    return row


def new_password() -> str:
    return secrets.token_urlsafe(9)          # 12 characters, ~72 bits: a one-time password to hand out


def add(name: str, role: str = "student", password: str | None = None, *, home: Path) -> str:
    """Create an account; returns its one-time password (changed at first login)."""
    if not NAME.fullmatch(name or ""):
        raise UserError("err.users.bad_name", name=name)
    password = password or new_password()
    try:
        open_store(home).add_user(name, _check_role(role), _hash(password))
    except sqlite3.IntegrityError:
        raise UserError("err.users.exists", name=name) from None
    audit(OPERATOR_NAME, "user_add", name, detail=role, home=home)
    return password


def import_roster(path: str | Path, home: Path) -> list[tuple[str, str]]:
    """Accounts from a CSV with a ``name`` column and an optional ``role`` column; returns (name, password)
    for each new one. Names that exist already are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if rows and "name" not in rows[0]:
        raise UserError("err.users.roster_header", path=path)
    out = []
    for r in rows:
        name, role = (r.get("name") or "").strip(), (r.get("role") or "student").strip() or "student"
        if name and open_store(home).user(name) is None:
            out.append((name, add(name, role, home=home)))
    return out


def reset(name: str, home: Path) -> str:
    """A new one-time password; every session of the account ends."""
    _row(name, home)
    password = new_password()
    store = open_store(home)
    store.update_user(name, password_hash=_hash(password), must_change=1, disabled=0)
    store.revoke_sessions(user=name)
    audit(OPERATOR_NAME, "user_reset", name, home=home)
    return password


def disable(name: str, home: Path) -> None:
    _row(name, home)
    store = open_store(home)
    store.update_user(name, disabled=1)
    store.revoke_sessions(user=name)
    audit(OPERATOR_NAME, "user_disable", name, home=home)


def set_role(name: str, role: str, home: Path) -> None:
    _row(name, home)
    open_store(home).update_user(name, role=_check_role(role))
    audit(OPERATOR_NAME, "user_role", name, detail=role, home=home)


def set_quota(name: str, max_running: int | None = None, max_queued: int | None = None,
              max_gpu_hours: float | None = None, *, home: Path) -> None:
    """Per-account overrides of WORKBENCH_USER_MAX_RUNNING / _QUEUED / _GPU_HOURS_PER_DAY (-1: back to the
    class default)."""
    _row(name, home)
    fields = {k: (None if v < 0 else v) for k, v in (("max_running", max_running), ("max_queued", max_queued),
                                                     ("max_gpu_hours", max_gpu_hours)) if v is not None}
    if fields:
        open_store(home).update_user(name, **fields)
        audit(OPERATOR_NAME, "user_quota", name, detail=str(fields), home=home)


DISK_TYPES = ("dataset", "adapter", "model")      # registry things whose files a user's disk quota counts


_folder_bytes: dict[Path, tuple[float, int]] = {}       # folder -> (when walked, bytes)


def _bytes(path: Path) -> int:
    """A file's size (one stat), or a folder's: walked again only DISK_SIZE_CACHE_S after the last walk."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    when, size = _folder_bytes.get(path, (0.0, 0))
    if time.monotonic() - when > defaults.DISK_SIZE_CACHE_S:
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        _folder_bytes[path] = (time.monotonic(), size)
    return size


def disk_usage(home: Path) -> dict[str, int]:
    """Bytes each owner's datasets, adapters and models take in the workspace (the bundled samples are outside
    it), from one pass over the registry, plus each account's own gallery folder, their uploaded documents
    (``documents/<owner>/``) and every byte their jobs wrote in their job folders (checkpoints, merged copies,
    downloads in progress, agent files, knowledge-base indexes)."""
    root = home.resolve()
    store = open_store(home)
    total = {u["name"]: _bytes(paths.user_gallery(u["name"], home=root)) for u in store.users()}
    documents = root / "documents"                   # uploads for knowledge bases (backend/pipeline/rag.py save_upload)
    for folder in documents.iterdir() if documents.is_dir() else ():
        if folder.is_dir() and not folder.is_symlink():
            total[folder.name] = total.get(folder.name, 0) + _bytes(folder)
    owners = store.job_owners()
    for folder in (root / "jobs").iterdir() if (root / "jobs").is_dir() else ():
        owner = owners.get(int(folder.name)) if folder.name.isdigit() else None
        if owner:
            total[owner] = total.get(owner, 0) + _bytes(folder)
    for t in DISK_TYPES:
        for e in store.items(t):
            path = Path(e.path).resolve() if e.path and e.owner else None
            if path is not None and paths.is_inside(path, root):
                total[e.owner] = total.get(e.owner, 0) + _bytes(path)
    return total


def disk_used(name: str, home: Path) -> int:
    return disk_usage(home).get(name, 0)


def check_disk(owner: str | None, adding: int, error: type[Refused], home: Path) -> None:
    """Refuse (``error``, audited) what would take ``owner`` past WORKBENCH_USER_DISK_QUOTA_GB (disk_usage): with accounts,
    for students (instructors' files are the class's). The refusal shows what they use now."""
    cap = defaults.setting("USER_DISK_QUOTA_GB") * 2**30
    if not cap or not owner or mode() == "none" or is_instructor(owner, home=home):
        return
    used = disk_used(owner, home)
    from backend.core.paths import human_size
    if not adding and used >= cap:            # an import, whose size is known only once fetched
        refuse(owner, "add files", owner, error("err.users.disk_full", used=human_size(used), cap=human_size(cap)), home=home)
    if adding and used + adding > cap:
        refuse(owner, "add files", owner, error("err.users.disk_quota", used=human_size(used),
                                                 adding=human_size(adding), cap=human_size(cap)), home=home)


def accounts(home: Path) -> list[dict]:
    return [{k: r[k] for k in ("name", "role", "disabled", "must_change", "lang", "max_running", "max_queued",
                               "max_gpu_hours", "created_at")}
            for r in open_store(home).users()]


def set_lang(user: User, lang: str, home: Path) -> None:
    open_store(home).update_user(user.name, lang=lang)


def change_password(user: User, old: str, new: str, home: Path, keep: str | None = None) -> User:
    """The account's own password change (also the forced one at first login): every other session of the
    account ends (``keep``: the token of the one that changed it)."""
    row = _row(user.name, home)
    if not _verify(row["password_hash"], old):
        raise Refused("err.users.wrong_password")
    if len(new) < MIN_PASSWORD:
        raise Refused("err.users.short_password", n=MIN_PASSWORD)
    if new == old:
        raise Refused("err.users.same_password")
    open_store(home).update_user(user.name, password_hash=_hash(new), must_change=0)
    open_store(home).revoke_sessions(user=user.name, keep=_session_id(keep, home) if keep else None)
    audit(user.name, "password_change", user.name, home=home)
    return _user(_row(user.name, home))


def _verify(hash_: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError
    try:
        if not hash_:
            return False
        with _HASHING:
            return _hasher().verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False


# -- logins and sessions ----------------------------------------------------------------------------
def _secret(home: Path) -> bytes:
    """The signing key, made once per workspace, readable by its owner only."""
    path = home / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:            # another process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _signer(home: Path):
    from itsdangerous import URLSafeTimedSerializer
    return URLSafeTimedSerializer(_secret(home), salt="workbench-session")


def _session_id(token: str, home: Path | None, max_age: float | None = None) -> str | None:
    """The session id a token signs, or None when its signature is bad or it expired."""
    from itsdangerous import BadSignature
    try:
        return _signer(home).loads(token, max_age=max_age)
    except BadSignature:
        return None


def session_seconds() -> int:
    return int(defaults.setting("SESSION_HOURS") * 3600)


_TRIES = [threading.Lock() for _ in range(64)]      # tries on one (account, address) one after another


def login(name: str, password: str, address: str = "", *, home: Path) -> tuple[User, str]:
    """A login try, after the previous one on the same (account, address) has been counted (so parallel wrong
    tries can't all slip under the limit); see ``_login``."""
    with _TRIES[hash((name, address)) % len(_TRIES)]:
        return _login(name, password, address, home=home)


def _login(name: str, password: str, address: str = "", *, home: Path) -> tuple[User, str]:
    """Check a password; returns the user and a session token. Past WORKBENCH_LOGIN_MAX_FAILS failed tries in
    WORKBENCH_LOGIN_WINDOW_S for one (account, address), each next try there waits a delay that doubles
    (``login_delay``), so a student guessing from one place never locks the account out elsewhere; one
    address failing on many accounts waits out the window. Every try is in the audit log."""
    store = open_store(home)
    now, window = time.time(), defaults.setting("LOGIN_WINDOW_S")
    limit = defaults.setting("LOGIN_MAX_FAILS")
    shared = address in LOOPBACK       # everyone who comes through an SSH tunnel arrives from here
    delay = login_delay(store.count_audit("login_failed", now - window, target=name, address=address))
    if delay and store.count_audit("login_failed", now - delay, target=name, address=address):
        audit(name, "login_throttled", name, address, home=home)
        raise Throttled("err.users.wait", seconds=int(delay))
    if not shared and store.count_audit("login_failed", now - window, address=address) >= limit * ADDRESS_FAILS_FACTOR:
        audit(name, "login_throttled", name, address, home=home)
        raise Throttled("err.users.throttled", minutes=int(window // 60) or 1)
    row = store.user(name)
    if row is None or row["disabled"]:
        _verify(_unknown_hash(), password)            # the same work as a known name: no timing tells them apart
        audit(name, "login_failed", name, address, home=home)
        raise Refused("err.users.wrong_login")
    if not _verify(row["password_hash"], password):
        audit(name, "login_failed", name, address, home=home)
        raise Refused("err.users.wrong_login")
    if _hasher().check_needs_rehash(row["password_hash"]):
        store.update_user(name, password_hash=_hash(password))
    audit(name, "login", name, address, home=home)
    return _user(row), start_session(name, home)


def login_delay(fails: int) -> float:
    """Seconds to wait after the last failed try once an (account, address) has ``fails`` in the window: none
    up to WORKBENCH_LOGIN_MAX_FAILS, then 2, 4, 8... seconds, at most the window."""
    over = fails - defaults.setting("LOGIN_MAX_FAILS")
    return 0.0 if over < 0 else min(2.0 ** min(over + 1, 30), defaults.setting("LOGIN_WINDOW_S"))


@functools.cache
def _unknown_hash() -> str:
    return _hash(secrets.token_urlsafe(16))


def start_session(name: str, home: Path) -> str:
    sid = secrets.token_urlsafe(24)
    open_store(home).add_session(sid, name, time.time() + session_seconds())
    return _signer(home).dumps(sid)


def session_user(token: str | None, home: Path) -> User | None:
    """The user of a live session token: signature good, not expired, not revoked, account enabled."""
    sid = _session_id(token, home, max_age=session_seconds()) if token else None
    if sid is None:
        return None
    store = open_store(home)
    s = store.session(sid)
    row = store.user(s["user"]) if s else None
    return _user(row) if row and not row["disabled"] else None


def logout(token: str | None, home: Path) -> None:
    sid = _session_id(token or "", home)
    if sid is None:
        return
    s = open_store(home).session(sid)
    if open_store(home).revoke_sessions(sid=sid) and s:
        audit(s["user"], "logout", s["user"], home=home)


PROXY_SECRET_HEADER = "X-Workbench-Proxy-Secret"
PROXY_SECRET_MIN = 16          # characters: WORKBENCH_AUTH_PROXY_SECRET shorter than this is no secret


def serve_problem(address: str) -> UserError | None:
    """Why the app must not start on ``address`` in this mode, else None: AUTH=header without a usable
    shared secret; AUTH=none (one person, no login) on an address other machines reach."""
    if mode() == "header" and len(defaults.setting("AUTH_PROXY_SECRET")) < PROXY_SECRET_MIN:
        return UserError("err.users.proxy_secret", header=PROXY_SECRET_HEADER, chars=PROXY_SECRET_MIN)
    if mode() == "none" and not is_loopback(address):
        return UserError("err.users.bind_none", address=address or "(every address)")
    return None


def is_loopback(address: str) -> bool:
    try:
        return address == "localhost" or ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def header_user(headers: dict, address: str | None, home: Path) -> User | None:
    """AUTH=header: the user a trusted proxy names. Unknown names get a student account (no password).
    Believed only when the request carries the proxy's shared secret and comes from a trusted address
    (``address`` is the TCP peer; X-Forwarded-For is never read): anything else is ignored."""
    def header(name: str) -> str:
        return next((v for k, v in headers.items() if k.lower() == name.lower()), "")
    secret = defaults.setting("AUTH_PROXY_SECRET")
    if len(secret) < PROXY_SECRET_MIN or not hmac.compare_digest(header(PROXY_SECRET_HEADER).encode(), secret.encode()):
        return None
    trusted = {a.strip() for a in defaults.setting("TRUSTED_PROXIES").split(",") if a.strip()}
    if (address or "127.0.0.1") not in trusted:
        return None
    name = header(defaults.setting("AUTH_HEADER"))
    name = name.strip()
    if not NAME.fullmatch(name):
        return None
    store = open_store(home)
    row = store.user(name)
    if row is None:
        try:
            store.add_user(name, "student", "")
            store.update_user(name, must_change=0)
            audit(name, "user_add", name, address, "from the proxy header", home=home)
        except sqlite3.IntegrityError:
            pass
        row = store.user(name)
    return _user(row) if not row["disabled"] else None
