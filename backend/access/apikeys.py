"""A person's API keys for the OpenAI gateway on the app's port (backend/pipeline/gateway.py).

A key is shown once, when it is made; the store keeps its SHA-256 (a key is 256 random bits, so a fast
hash is as safe as a slow one, and every request can check it cheaply) and its first characters, to
tell keys apart on the page. A key acts as its owner: it reaches what they may use, and stops working
when it is revoked or their account is disabled.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from backend.access import users
from backend.core.store import open_store

PREFIX = "wbk-"
NAME = re.compile(r"^[\w .-]{1,40}$")


class Refused(users.Refused):
    pass


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(name: str, by: users.Actor, home: Path) -> str:
    """A new key for ``by`` named ``name``; the key itself is returned once and never stored."""
    owner = users.actor(by, home=home)
    name = name.strip()
    if not NAME.match(name):
        raise Refused("err.apikeys.bad_name", name=name)
    key = PREFIX + secrets.token_urlsafe(32)
    key_id = open_store(home).add_api_key(owner, name, _hash(key), key[:len(PREFIX) + 4])
    users.audit(users.actor(by, home=home), "api_key_created", f"key {key_id}", detail=name, home=home)
    return key


def listed(by: users.Actor, home: Path) -> list[dict]:
    """The keys ``by`` may see and revoke: their own; an instructor (and the operator) every key."""
    user = users.acting(by, home=home)
    rows = open_store(home).api_keys(None if user.instructor else user.name)
    return [{k: v for k, v in r.items() if k != "hash"} for r in rows]


def revoke(key_id: int, by: users.Actor, home: Path) -> None:
    row = open_store(home).api_key(key_id=key_id)
    if row is None:
        raise Refused("err.apikeys.no_key", id=key_id)
    users.require_owner(by, row["owner"], "revoke", f"key {key_id}", Refused("err.apikeys.not_yours", id=key_id), home=home)
    if open_store(home).revoke_api_key(key_id):
        users.audit(users.actor(by, home=home), "api_key_revoked", f"key {key_id}", detail=row["owner"], home=home)


def person(key: str | None, home: Path) -> tuple[users.User, int] | None:
    """Who a key acts as, and the key's id; None for an unknown or revoked key, or a disabled account."""
    if not key or not key.startswith(PREFIX):
        return None
    row = open_store(home).api_key(hash_=_hash(key))
    if row is None or row["revoked_at"] is not None:
        return None
    if users.mode() == "none":
        return users.acting(row["owner"], home=home), row["id"]
    account = open_store(home).user(row["owner"])
    if account is None or account["disabled"]:
        return None
    return users.acting(row["owner"], home=home), row["id"]


def used(key_id: int, tokens: int, home: Path) -> None:
    open_store(home).use_api_key(key_id, tokens)
