"""Code from models runs only by explicit opt-in.

A model folder whose config names its own Python classes (``auto_map`` in config.json,
tokenizer_config.json or a processor config) runs that code when a loader is told
``trust_remote_code=True``. The opt-in is the registry's ``trust_remote_code`` on one model entry
(Models page), and a re-download clears it. Submitting a job that would load such a model without
the opt-in is refused; every loader in a job passes ``allowed(folder)`` explicitly, so an opt-in taken
back while the job waited still holds.
"""
from __future__ import annotations

import json
from pathlib import Path

from backend.errors import UserError
from backend.store import open_store

CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
MODEL_KEYS = ("model", "base_model")            # spec fields holding a registry model name
ADAPTER_KEYS = ("adapter",)                     # ... a registry adapter name (its base model is loaded)
FOLDER_KEYS = ("path", "tokenizer_path", "model_path")    # ... a model folder


def has_remote_code(folder: str | Path) -> bool:
    for name in CODE_CONFIGS:
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return True
    return False


def allowed(folder: str | Path, home: Path) -> bool:
    """True only when a registry model in ``folder`` carries the opt-in."""
    try:
        target = Path(folder).resolve()
    except (OSError, ValueError):
        return False
    return any(row.meta.get("trust_remote_code") is True and Path(row.path).resolve() == target
               for row in open_store(home).items("model"))


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
        if has_remote_code(folder) and not allowed(folder, home):
            return UserError("err.model.remote_code", model=label)
    return None
