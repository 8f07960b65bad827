"""Code from models runs only by explicit opt-in.

A model folder whose config names its own Python classes (``auto_map`` in config.json,
tokenizer_config.json or a processor config) runs that code when a loader is told
``trust_remote_code=True``. The opt-in is the registry's ``trust_remote_code`` on one model entry
(Models page), bound to the content of the code it was given for: ``code_sha256``, a hash of every
``*.py`` in the folder and of each config that names ``auto_map``. Code that changed since (a
re-download that brought other code, a file swapped in the folder) voids the opt-in with a sentence.
Submitting a job that would load such a model without a valid opt-in is refused; every loader in a job
passes ``trust(folder, home)`` explicitly, checked right before it loads, so an opt-in taken back or
voided while the job waited still holds.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from backend.core.errors import UserError
from backend.core.registry import Entry
from backend.core.store import open_store

CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
MODEL_KEYS = ("model", "base_model")            # spec fields holding a registry model name
ADAPTER_KEYS = ("adapter",)                     # ... a registry adapter name (its base model is loaded)
FOLDER_KEYS = ("path", "tokenizer_path", "model_path")    # ... a model folder


def has_remote_code(folder: str | Path) -> bool:
    return any(has_remote_code_in(Path(folder) / name) for name in CODE_CONFIGS)


def code_files(folder: str | Path) -> list[Path]:
    """The files whose content the opt-in is bound to: every ``*.py`` below ``folder`` (not the download's
    own ``.cache``) and each code config that names ``auto_map``."""
    root = Path(folder)
    out = [root / name for name in CODE_CONFIGS if has_remote_code_in(root / name)]
    for top, dirs, names in os.walk(root):          # links to folders are not followed
        dirs[:] = sorted(d for d in dirs if not (top == str(root) and d == ".cache"))
        out += [Path(top) / n for n in sorted(names) if n.endswith(".py")]
    return out


def has_remote_code_in(config: Path) -> bool:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("auto_map"))


def code_hash(folder: str | Path) -> str:
    """sha256 over the code files' relative paths and contents (what a loader would read)."""
    root, h = Path(folder), hashlib.sha256()
    for path in code_files(root):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            h.update(b"\0unreadable")
        h.update(b"\0")
    return h.hexdigest()


def _opted_in(folder: str | Path, home: Path) -> Entry | None:
    """The registry model in ``folder`` that carries the opt-in (None when none does)."""
    try:
        target = Path(folder).resolve()
    except (OSError, ValueError):
        return None
    return next((row for row in open_store(home).items("model")
                 if row.meta.get("trust_remote_code") is True and Path(row.path).resolve() == target), None)


def _refusal_key(row: Entry, folder: str | Path) -> str | None:
    """Why the opt-in does not hold for the code ``folder`` has now (an error key), or None when it does. An opt-in
    given before hashes were kept names no code at all: it is asked again, never bound to whatever is there now."""
    if not row.meta.get("code_sha256"):
        return "err.model.code_unverified"
    return "err.model.code_changed" if row.meta["code_sha256"] != code_hash(folder) else None


def allowed(folder: str | Path, home: Path) -> bool:
    """True only when a registry model in ``folder`` carries the opt-in and its code is what the opt-in saw."""
    row = _opted_in(folder, home)
    return row is not None and not _refusal_key(row, folder)


def trust(folder: str | Path, home: Path) -> bool:
    """The ``trust_remote_code`` a loader passes, decided right before it loads: True with a valid opt-in,
    False without one; a UserError when the opt-in was given for other code than the folder holds now."""
    row = _opted_in(folder, home)
    if row is None:
        return False
    if why := _refusal_key(row, folder):
        raise UserError(why, model=row.name)
    return True


def _folders(spec, home: Path | None) -> list[tuple[str, Path]]:
    """(label, folder) of every model a spec names, by registry name or by folder, at any depth."""
    store = open_store(home)
    out = []
    if isinstance(spec, list):
        for item in spec:
            out += _folders(item, home)
        return out
    if not isinstance(spec, dict):
        return out
    for key, value in spec.items():
        if isinstance(value, (dict, list)):
            out += _folders(value, home)
            continue
        if not isinstance(value, str) or not value:
            continue
        if key in ADAPTER_KEYS:
            adapter = store.get("adapter", value)
            value = adapter.meta.get("base_model", "") if adapter else ""
            key = "model"
        if key in MODEL_KEYS and value:
            row = store.get("model", value)
            if row:
                out.append((value, Path(row.path)))
        elif key in FOLDER_KEYS and (Path(value) / "config.json").is_file():
            out.append((value, Path(value)))
    return out


def refusal(spec: dict, home: Path) -> UserError | None:
    """Why a spec must not be queued (None when it may): it names a model with its own code and no opt-in."""
    for label, folder in _folders(spec, home):
        if not has_remote_code(folder):
            continue
        row = _opted_in(folder, home)
        if row is None:
            return UserError("err.model.remote_code", model=label)
        if why := _refusal_key(row, folder):
            return UserError(why, model=label)
    return None
