"""Evaluation with OpenCompass: what can be evaluated, checks before queueing, past runs and their results.

The Evaluate page and the CLI call these; the work itself is the ``evaluate`` job (jobs/evaluate.py)
in the ``opencompass`` engine. No streamlit here, no SQL (backend/core/store.py).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from backend.access import ownership, users
from backend.runtime import engines, logs, queue, server_auth
from backend.workspace import models
from backend.pipeline.chat import check_use, endpoints
from backend.pipeline.rag_eval import KIND as RAG_KIND     # with and without retrieval: listed here too
from backend.workspace.datasets import list_datasets
from backend.core.errors import UserError
from backend.core.states import PENDING
from backend.core.store import open_store
from backend.kinds import evaluate as opencompass

ENGINE = "opencompass"
KIND = "evaluate"
ENGINE_MISSING = "err.eval.engine_missing"
# Standard OpenCompass dataset configs offered in the page (others can be typed by name).
STANDARD = ["ceval_gen", "cmmlu_gen", "mmlu_gen", "gsm8k_gen", "math_gen", "ARC_c_gen", "hellaswag_gen",
            "humaneval_gen", "race_gen", "triviaqa_gen"]


# -- the engine ---------------------------------------------------------------------------------
def engine_ready(home: Path) -> bool:
    return engines.installed(ENGINE, home)


def engine_install_job(home: Path) -> int | None:
    """The queued or running engine_install job for OpenCompass, if any."""
    for j in queue.list_jobs(states=PENDING, kind="engine_install", home=home, by=users.OPERATOR):
        if j.spec.get("engine") == ENGINE:
            return j.id
    return None


def install_engine(owner: str, *, home: Path) -> int:
    """Queue the OpenCompass engine install (or return the one already queued)."""
    return engine_install_job(home) or queue.submit("engine_install", {"engine": ENGINE}, owner=owner, home=home)


def package_dir(home: Path) -> Path | None:
    """The installed ``opencompass`` package folder of the engine, if installed."""
    hits = sorted(engines.env_dir(ENGINE, home).glob("lib/python*/site-packages/opencompass"))
    return hits[0] if hits else None


def data_cache(home: Path) -> Path:
    return opencompass.compass_data_cache(home)


# -- what can be evaluated ----------------------------------------------------------------------
def model_choices(home: Path, by: users.Actor) -> list[dict]:
    """Registry models, adapters (on their base model) and live endpoints, each as
    ``{"name", "kind", "ref"}`` where ``ref`` is the ModelRef dict the job takes (None when unusable,
    with ``problem``, a UserError, saying why)."""
    store = open_store(home)
    out = []
    for m in ownership.items("model", by, home):
        gguf = models.gguf_of(m)
        out.append({"name": m.name, "kind": "model", "ref": {"name": m.name, "path": m.path,
                                                             **({"gguf_file": gguf.name} if gguf else {})}})
    for a in ownership.items("adapter", by, home):
        base = (a.meta or {}).get("base_model", "")
        entry = store.get("model", base) if base else None
        base_path = entry.path if entry else base if base and Path(base, "config.json").is_file() else ""
        item = {"name": a.name, "kind": "adapter", "base": base,
                "ref": {"name": a.name, "path": base_path, "peft_path": a.path} if base_path else None}
        if not base_path:
            item["problem"] = UserError("err.eval.base_missing", base=base)
        out.append(item)
    try:
        live = endpoints(home, by)
    except ImportError:
        live = [{"name": e.name, **e.meta} for e in ownership.items("endpoint", by, home)]
    for e in live:
        if not e.get("url"):
            continue
        out.append({"name": e["name"], "kind": "endpoint", "url": e["url"], "ref": endpoint_ref(e, store)})
    return out


def abbr(name: str) -> str:
    """A name as OpenCompass's abbr (the job's ModelRef name): "tiny #3" -> "tiny-3"."""
    return re.sub(r"[^\w.\-+@]+", "-", name).strip("-")[:80] or "endpoint"


def endpoint_ref(e: dict, store=None) -> dict:
    """The ModelRef of a live endpoint: its name made an abbr, its URL, the model name requests must
    send (a folder path for `transformers serve`, the served name for LMDeploy) and a local tokenizer
    folder OpenCompass counts tokens with."""
    model = str(e.get("model", ""))
    tok = ""
    if e.get("tokenizer") and Path(e["tokenizer"]).is_file():              # …/tokenizer.json of the served folder
        tok = str(Path(e["tokenizer"]).parent)
    elif model and Path(model, "tokenizer_config.json").is_file():
        tok = model
    elif store is not None and model and store.get("model", model):
        tok = store.get("model", model)["path"]
    return {"name": abbr(e["name"]), "url": e["url"], "api_model": model, "tokenizer_path": tok}


def external_ref(url: str, api_model: str = "", tokenizer_model: str = "", *, home: Path) -> dict:
    """The ModelRef of an outside OpenAI-compatible URL; ``tokenizer_model`` names a registry model whose
    tokenizer counts tokens (offline, OpenCompass cannot fetch tiktoken's). Its API key is not part of it:
    pass it to ``submit(api_key=...)``."""
    from urllib.parse import urlparse
    url = url.strip().rstrip("/")
    entry = open_store(home).get("model", tokenizer_model) if tokenizer_model else None
    name = api_model.strip().rstrip("/").rsplit("/", 1)[-1] or urlparse(url).netloc or "external"
    return {"name": abbr(name), "url": url,
            "api_model": api_model.strip(), "tokenizer_path": entry.path if entry else ""}


def dataset_choices(home: Path, by: users.Actor) -> list[dict]:
    """Registered datasets (bundled samples included) with their OpenCompass format:
    ``{"name", "path", "format": "mcq"|"qa"|"", "problem": a UserError or None, "ref"}``."""
    try:
        entries = list_datasets(home, by)
    except ImportError:
        entries = ownership.items("dataset", by, home)
    out = []
    for d in entries:
        fmt, problem = opencompass.custom_format(d.path)
        out.append({"name": d.name, "path": d.path, "format": fmt, "problem": problem,
                    "ref": {"name": d.name, "path": d.path} if fmt else None})
    return out


def standard_choices(home: Path) -> list[dict]:
    """Standard dataset configs of the installed engine: ``{"name", "missing": [data folders]}``."""
    pkg = package_dir(home)
    if pkg is None:
        return []
    out = []
    for name in STANDARD:
        cfg = opencompass.find_standard_config(name, pkg)
        if cfg is not None:
            out.append({"name": name, "missing": opencompass.missing_data(cfg, pkg, data_cache(home))})
    return out


# -- checks and submitting ----------------------------------------------------------------------
def check(spec: dict, home: Path, api_key: str = "") -> list[str]:
    """Problems that would make the run fail, in English words; empty when it can be queued."""
    return [str(p) for p in problems(spec, home, api_key)]


def problems(spec: dict, home: Path, api_key: str = "") -> list[UserError]:
    """Problems that would make the run fail (keyed errors); empty when it can be queued. Endpoints are
    asked for their model list (with ``api_key``), so a stopped server is caught here."""
    try:
        _, model = queue.validate(KIND, spec)
    except queue.SubmitError as e:
        return [e]
    problems = []
    for m in model.models:
        key = server_auth.key_for_url(m.url, home) or api_key if m.url else ""
        problem = opencompass.endpoint_problem(m.url, key, timeout=3.0, home=home) if m.url else None
        if problem:
            problems.append(UserError("err.eval.endpoint", name=m.name, problem=problem))
    pkg = package_dir(home)
    if not engine_ready(home):
        problems.append(UserError(ENGINE_MISSING))
    for d in model.datasets:
        if not d.config or pkg is None:
            continue
        cfg = opencompass.find_standard_config(d.config, pkg)
        if cfg is None:
            problems.append(UserError("err.eval.no_config", name=d.name, config=d.config))
            continue
        missing = opencompass.missing_data(cfg, pkg, data_cache(home))
        if missing:
            problems.append(UserError("err.eval.no_data", name=d.name, config=d.config, cache=data_cache(home),
                                      missing=", ".join(missing)))
    return problems


def submit(spec: dict, owner: str, install_engine_if_missing: bool = False, api_key: str = "", *,
           home: Path) -> int:
    """Queue an evaluation. With ``install_engine_if_missing`` a missing engine is installed first
    (the worker keeps the evaluation queued until then); otherwise it is a SubmitError. ``api_key``
    (for endpoints that need one) reaches the job as the secret OPENAI_API_KEY: never the spec or log."""
    for m in spec.get("models") or [] if isinstance(spec, dict) else []:      # its key is not theirs to use
        if isinstance(m, dict) and m.get("url"):
            check_use({"url": m["url"], "external": True}, owner, queue.Refused, home=home)
    found = problems(spec, home, api_key)
    if install_engine_if_missing and any(p.key == ENGINE_MISSING for p in found):
        install_engine(owner, home=home)
        found = [p for p in found if p.key != ENGINE_MISSING]
    if found:
        raise queue.SubmitError("err.eval.problems", problems=found)
    return queue.submit(KIND, spec, owner=owner, home=home, label=spec.get("name", ""),
                        secrets={"OPENAI_API_KEY": api_key} if api_key else None)


# -- past runs and results ----------------------------------------------------------------------
def runs(home: Path, by: users.Actor) -> list[dict]:
    """Evaluations ``by`` may see (a student: their own and the instructors'), newest first, with their registry
    entry when they finished: OpenCompass's and the with/without-retrieval ones (``rag``: a rag_eval job, its
    model is the knowledge-base endpoint):
    ``{"job_id", "state", "name", "models", "datasets", "created_at", "error", "rag"}``."""
    store = open_store(home)
    entries = {e.job_id: e for e in store.items("eval")}
    out = []
    jobs = sorted(store.jobs(kind=KIND, limit=500) + store.jobs(kind=RAG_KIND, limit=500), key=lambda j: -j.id)
    for j in jobs:
        e = entries.get(j.id)
        if not users.may_use(e or j.owner, by, home=home):           # a shared run is listed too
            continue
        rag = j.kind == RAG_KIND
        out.append({"job_id": j.id, "state": j.state, "name": e.name if e else j.label,
                    "models": [j.spec.get("endpoint", "")] if rag else [m["name"] for m in j.spec.get("models", [])],
                    "datasets": [j.spec.get("dataset", "")] if rag else [d["name"] for d in j.spec.get("datasets", [])],
                    "created_at": j.created_at, "error": j.error_message or "", "rag": rag})
    return out


def result(job_id: int, home: Path, by: users.Actor) -> dict | None:
    """The result.json of a finished, successful evaluation (OpenCompass's or a rag_eval's: both hold a ``table``);
    refused (audited) when ``by`` may not see it."""
    store = open_store(home)
    job = store.job(job_id)
    run = next((e for e in store.items("eval") if e.job_id == job_id), None)
    if job is not None and not users.may_use(run or job.owner, by, home=home):
        users.refuse(by, "see", f"evaluation {job_id}", queue.Refused("err.users.eval_not_yours", job=job_id), home=home)
    r = logs.result(job_id, home)
    return r if r and r.get("ok") and "table" in r else None


def table(res: dict) -> list[dict]:
    """Wide rows: ``{"dataset", "metric", <model>: score, ...}``, one per dataset and metric."""
    rows: dict[tuple, dict] = {}
    for t in res["table"]:
        row = rows.setdefault((t["dataset"], t["metric"]), {"dataset": t["dataset"], "metric": t["metric"]})
        row[t["model"]] = t["score"]
    return list(rows.values())


def deltas(res: dict) -> list[dict]:
    """Adapter minus base for every adapter evaluated beside its own base model (same folder, no adapter)."""
    models = res.get("models", [])
    scores = {(t["model"], t["dataset"], t["metric"]): t["score"] for t in res["table"]}
    out = []
    for a in models:
        if not a.get("peft_path"):
            continue
        base = next((m for m in models if m.get("path") == a["path"] and not m.get("peft_path")), None)
        if base is None:
            continue
        for (model, dataset, metric), score in scores.items():
            if model != a["name"]:
                continue
            b = scores.get((base["name"], dataset, metric))
            out.append({"dataset": dataset, "metric": metric, "base": base["name"], "adapter": a["name"],
                        "base_score": b, "adapter_score": score,
                        "delta": None if b is None or score is None else round(score - b, 2)})
    return out


def items(res: dict, model: str | None = None, dataset: str | None = None, wrong_only: bool = False) -> list[dict]:
    """Per-item drill-down rows: model, dataset, index, prompt, prediction, gold, correct (+ extracted,
    reference: what the scorer compared, when it says)."""
    return [it for it in res.get("items", [])
            if (model is None or it["model"] == model) and (dataset is None or it["dataset"] == dataset)
            and (not wrong_only or it["correct"] is False)]


def to_csv(res: dict, what: str = "table") -> str:
    """The results table (long: dataset, metric, mode, model, score) or the items as CSV text."""
    rows = res["table"] if what == "table" else items(res)
    fields = ["dataset", "metric", "mode", "model", "score"] if what == "table" else \
        ["model", "dataset", "index", "prompt", "prediction", "extracted", "gold", "reference", "correct"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
