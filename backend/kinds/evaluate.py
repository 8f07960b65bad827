"""The evaluate job's spec (jobs/evaluate.py) and what is known of OpenCompass before it runs:
its custom dataset formats, where a standard config and its data are, whether an endpoint answers.
The Evaluate page and ``queue.submit`` check with these; the job uses the same functions."""
from __future__ import annotations

import ast
import csv
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.core import url_guard
from backend.runtime import server_auth
from backend.workspace import rows
from backend.kinds import Kind
from backend.core.errors import UserError

KIND = Kind("evaluate", "jobs.evaluate", engine="opencompass",
           doc="OpenCompass evaluation of models x datasets: results table, per-item predictions")


DATA_EXTS = (".jsonl", ".csv")  # what OpenCompass's CustomDataset reads
MCQ_OPTIONS = "ABCDEFGHIJ"


class ModelRef(BaseModel):
    """One column of the results: a model folder (optionally + a LoRA adapter) or an endpoint."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)    # registry name; the model's abbr in OpenCompass
    path: str = ""                                    # Hugging Face model folder
    peft_path: str = ""                               # LoRA adapter folder applied on ``path``
    url: str = ""                                     # OpenAI-compatible endpoint base URL (…/v1)
    api_model: str = ""                               # the model's name at that endpoint
    tokenizer_path: str = ""                          # endpoint: local tokenizer for token counts
    gguf_file: str = ""                               # a .gguf in ``path`` (a GGUF export): dequantized by the job first

    @field_validator("name")
    @classmethod
    def plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[\w.\-+@]+", v):
            raise UserError("err.eval.model_name", value=v)
        return v

    @model_validator(mode="after")
    def one_source(self):
        if bool(self.path) == bool(self.url):
            raise UserError("err.eval.path_or_url", name=self.name)
        if self.url and not self.url.startswith(("http://", "https://")):
            raise UserError("err.eval.url_scheme", name=self.name)
        if self.tokenizer_path and not (Path(self.tokenizer_path) / "tokenizer_config.json").is_file():
            raise UserError("err.eval.not_tokenizer", name=self.name, path=self.tokenizer_path)
        if self.gguf_file:
            if not (Path(self.path) / self.gguf_file).is_file() or self.peft_path:
                raise UserError("err.eval.not_gguf", name=self.name, path=Path(self.path) / self.gguf_file)
        elif self.path:
            if not (Path(self.path) / "config.json").is_file():
                raise UserError("err.eval.not_model", name=self.name, path=self.path)
            if self.peft_path and not (Path(self.peft_path) / "adapter_config.json").is_file():
                raise UserError("err.eval.not_adapter", name=self.name, path=self.peft_path)
        return self


class DatasetRef(BaseModel):
    """One row group of the results: a custom MCQ/QA file or a standard OpenCompass dataset config."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)    # registry name; the dataset's abbr
    path: str = ""                                    # custom .jsonl/.csv in OpenCompass format
    config: str = ""                                  # standard config, e.g. gsm8k_gen, ceval_gen
    limit: int = Field(0, ge=0)                       # first N items only (0 = all)

    @field_validator("name", "config")
    @classmethod
    def plain(cls, v: str) -> str:
        if v and not re.fullmatch(r"[\w.\-+@]+", v):
            raise UserError("err.eval.dataset_name", value=v)
        return v

    @model_validator(mode="after")
    def one_source(self):
        if bool(self.path) == bool(self.config):
            raise UserError("err.eval.path_or_config", name=self.name)
        if self.path:
            kind, problem = custom_format(self.path)
            if problem:
                raise UserError("err.eval.dataset", name=self.name, problem=problem)
        return self


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelRef] = Field(min_length=1, max_length=16)
    datasets: list[DatasetRef] = Field(min_length=1, max_length=32)
    max_out_len: int = Field(64, ge=1, le=32768)      # generated tokens per answer
    batch_size: int = Field(8, ge=1, le=1024)
    max_seq_len: int = Field(2048, ge=64, le=1_000_000)
    gpus: int = Field(0, ge=0, le=8)                  # per model; 0 = CPU (device_map cpu, float32)
    name: str = ""                                    # the eval run's registry name (default eval-<job id>)

    @model_validator(mode="after")
    def unique(self):
        for what, refs in (("model", self.models), ("dataset", self.datasets)):
            names = [r.name for r in refs]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise UserError("err.eval.duplicate", what=what, names=", ".join(dup))
        return self


def check(spec: Spec, home: Path, owner: str) -> dict:
    if all(m.url for m in spec.models):
        # every model is an endpoint: the server does the heavy work; this job only sends requests,
        # so it must not wait for the CPU slot a CPU `serve` job holds
        return {"cpu_slots": 0, "gpus": 0}
    if not spec.gpus:
        return {}
    sizes = [sum(f.stat().st_size for f in Path(m.path).glob("*") if f.suffix in (".safetensors", ".bin"))
             for m in spec.models if m.path]
    return {"gpus": spec.gpus, "gpu_mem_gb": round(max(sizes, default=0) / 1e9 * 1.3 + 1.0, 1)}


# -- dataset formats (shared with backend/pipeline/evaluate.py) -------------------------------------------
FIRST_RECORD_MAX = 16 * 2**20     # a first line longer than this is reported, not read (pages call this on every rerun)


def first_record(path: str | Path) -> dict | None:
    """The first record of a .jsonl or .csv file (None when it has none); a UserError saying why it can't be read."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            n = 0
            while raw := f.readline(FIRST_RECORD_MAX):
                n += 1
                if len(raw) >= FIRST_RECORD_MAX:
                    raise UserError("err.eval.first_record", mb=FIRST_RECORD_MAX >> 20)
                if raw.strip():
                    rec, err = rows.parse_line(raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw, n)
                    if err:
                        raise err
                    return rec
        return None
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.DictReader(f), None)
    except UnicodeDecodeError:
        raise (rows.DatasetError("err.ds.gbk", where=path.name) if rows.head_looks_gbk(path)
               else UserError("err.eval.not_utf8")) from None
    except csv.Error as e:                             # a field over csv's limit, a NUL byte ...
        raise UserError("err.eval.csv", text=str(e)) from None


def custom_format(path: str | Path) -> tuple[str, UserError | None]:
    """("mcq" | "qa", None) when ``path`` is an OpenCompass custom dataset, else ("", why not: a UserError).

    OpenCompass's rule (datasets/custom.py): options are the columns A, B, C... in order; two or
    more make it multiple choice; ``answer`` is the gold; ``question`` goes in the prompt. ChatML files
    (``question`` a list of messages) are refused: read as QA, the list itself would be the prompt.
    """
    path = Path(path)
    if path.suffix not in DATA_EXTS:
        return "", UserError("err.eval.ext", name=path.name, suffix=path.suffix or path.name)
    if not path.is_file():
        return "", UserError("err.eval.no_file", path=path)
    try:
        rec = first_record(path)
    except UserError as e:
        return "", UserError("err.eval.unreadable", name=path.name, reason=e)
    except OSError as e:
        return "", UserError("err.eval.unreadable", name=path.name, reason=e.strerror or str(e))
    if not rec:
        return "", UserError("err.eval.no_records", name=path.name)
    if isinstance(rec.get("question"), list):
        return "", UserError("err.eval.chatml", name=path.name)
    options = [c for c in MCQ_OPTIONS if c in rec]
    options = options[:next((i for i, c in enumerate(options) if c != MCQ_OPTIONS[i]), len(options))]
    missing = [c for c in ("question", "answer") if c not in rec]
    if missing:
        return "", UserError("err.eval.fields", name=path.name, missing=", ".join(missing),
                             found=", ".join(map(str, rec)) or "-")
    if len(options) == 1:
        return "", UserError("err.eval.one_option", name=path.name)
    return ("mcq" if options else "qa"), None


# -- standard OpenCompass dataset configs --------------------------------------------------------
def find_standard_config(name: str, package_dir: Path) -> Path | None:
    """The config file of a standard dataset (``gsm8k_gen``) inside an installed opencompass package."""
    hits = sorted((package_dir / "configs" / "datasets").rglob(f"{name}.py"))
    return hits[0] if hits else None


def config_variable(config_file: Path) -> str:
    """The ``*_datasets`` list a dataset config defines or re-exports."""
    text = config_file.read_text(encoding="utf-8")
    m = re.search(r"import\s+(\w+_datasets)\b", text) or re.search(r"^(\w+_datasets)\s*=", text, re.M)
    if not m:
        raise UserError("err.eval.no_datasets_list", name=config_file.name)
    return m.group(1)


def data_ids(config_file: Path, depth: int = 0) -> set[str]:
    """The ``path=`` values (data ids such as ``opencompass/gsm8k``) a config and its bases use."""
    text = config_file.read_text(encoding="utf-8")
    ids = set(re.findall(r"""\bpath\s*=\s*['"]([^'"]+)['"]""", text))
    for rel in re.findall(r"from\s+\.(\w+)\s+import", text):
        base = config_file.parent / f"{rel}.py"
        if base.is_file() and depth < 3:
            ids |= data_ids(base, depth + 1)
    return ids


def missing_data(config_file: Path, package_dir: Path, cache_dir: Path) -> list[str]:
    """Data folders a standard config needs that are absent from COMPASS_DATA_CACHE."""
    mapping = {}
    info = package_dir / "utils" / "datasets_info.py"
    if info.is_file():
        for node in ast.parse(info.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DATASETS_MAPPING":
                mapping = ast.literal_eval(node.value)
    out = []
    for data_id in sorted(data_ids(config_file)):
        local = mapping.get(data_id, {}).get("local", data_id)
        path = Path(local) if os.path.isabs(local) else cache_dir / local
        default = Path.home() / ".cache" / "opencompass" / local     # OpenCompass's own fallback
        if not path.exists() and not default.exists():
            out.append(str(path))
    return out


def compass_data_cache(home: Path) -> Path:
    return Path(os.environ.get("COMPASS_DATA_CACHE") or home / "opencompass_data")


def endpoint_problem(url: str, api_key: str = "", timeout: float = 5.0, *, home: Path) -> UserError | None:
    """Why the OpenAI-compatible endpoint at ``url`` (…/v1) cannot be evaluated, or None when it answers
    ``GET /models``. The key goes in the request header only. A URL that is not one of the workbench's own
    endpoints is asked through the URL guard (public addresses only, http(s) at every hop)."""
    req = urllib.request.Request(url.rstrip("/") + "/models",
                                 headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    ours = bool(server_auth.key_for_url(url, home))
    try:
        with (urllib.request.urlopen(req, timeout=timeout) if ours else url_guard.open_url(req, timeout=timeout)):
            return None
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return UserError("err.eval.endpoint_key", url=url, code=e.code)
        return None     # it answers; some servers have no model list
    except (OSError, ValueError) as e:
        if why := url_guard.blocked(e):
            return UserError("err.url.blocked", url=url, reason=str(why))
        reason = getattr(e, "reason", e)
        return UserError("err.eval.endpoint_down", url=url, reason=reason)


ENDPOINT_SUGGESTION = ("start the endpoint again (a serve job, Chat page) or fix its URL and API key, "
                       "then retry the evaluation")
