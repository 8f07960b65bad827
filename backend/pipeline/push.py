"""Push (the push job, jobs/push.py): a registry model, adapter or dataset uploaded to a hub repository with a
generated card whose YAML metadata carries the lineage: base model, datasets, method, hyperparameters, metrics
and evaluation scores. Hugging Face through huggingface_hub's own API (whoami, create_repo, upload_folder),
ModelScope through modelscope's HubApi (create_repo, upload_folder); the student's token reaches the job as a
secret (HF_TOKEN, MODELSCOPE_API_TOKEN), never the spec, the database or the log.
"""
from __future__ import annotations

from pathlib import Path

from backend.core.errors import UserError
from backend.core.registry import Entry
from backend.core.store import open_store

TOKEN_ENV = {"huggingface": "HF_TOKEN", "modelscope": "MODELSCOPE_API_TOKEN"}
REPO_TYPE = {"model": "model", "adapter": "model", "dataset": "dataset"}
CARD_KEYS = ("base_model", "adapter", "datasets", "method", "exported_from", "quantized_from", "source", "id")


def lineage(entry: Entry, home: Path) -> dict:
    """What the entry came from, gathered from its own meta and, for a merged model, its adapter's."""
    meta = entry.meta or {}
    lin = {**{k: meta[k] for k in CARD_KEYS if meta.get(k)}, **(meta.get("lineage") or {})}
    adapter = open_store(home).get("adapter", lin["adapter"]) if lin.get("adapter") else None
    spec = meta.get("spec") or ((adapter.meta or {}).get("spec") if adapter else None) or {}
    hyper = {k: spec[k] for k in ("objective", "method", "lr", "epochs", "max_steps", "batch_size", "grad_accum",
                                  "max_length", "lora_r", "lora_alpha", "lora_dropout", "scheduler", "seed")
             if spec.get(k) not in (None, "")}
    metrics = meta.get("metrics") or ((adapter.meta or {}).get("metrics") if adapter else None) or {}
    evals = [{"eval": e.name, **row} for e in open_store(home).items("eval")
             for row in (e.meta or {}).get("table", []) if row.get("model") == entry.name]
    return {"lineage": {k: v for k, v in lin.items() if v not in (None, "", [])}, "hyperparameters": hyper,
            "metrics": {k: v for k, v in metrics.items() if v is not None}, "evaluations": evals}


def card(entry: Entry, repo_id: str, home: Path) -> str:
    """README.md for the repository: huggingface_hub's ModelCard/DatasetCard metadata (YAML) + a short text."""
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
    info = lineage(entry, home)
    lin = info["lineage"]
    tags = ["lab-workbench", *(t for t in (lin.get("method"), entry.meta.get("format")) if t)]
    extra = {"workbench": {"name": entry.name, "type": str(entry.type), **info}}
    if entry.type == "dataset":
        data = DatasetCardData(tags=tags, **extra)
        kind, cls = "dataset", DatasetCard
    else:
        data = ModelCardData(base_model=lin.get("base_model"), datasets=lin.get("datasets") or None, tags=tags,
                             library_name="peft" if entry.type == "adapter" else
                             "gguf" if entry.meta.get("format") == "gguf" else "transformers", **extra)
        kind, cls = "model", ModelCard
    rows = "\n".join(f"| {k} | {v} |" for k, v in {**lin, **info["hyperparameters"], **info["metrics"]}.items())
    text = (f"---\n{data.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]}\n\nThis {kind} ({entry.type} "
            f"`{entry.name}`) was made with Lab Workbench.\n\n| | |\n|---|---|\n{rows}\n")
    if info["evaluations"]:
        text += "\n## Evaluation\n\n| dataset | metric | score |\n|---|---|---|\n" + "\n".join(
            f"| {r.get('dataset')} | {r.get('metric')} | {r.get('score')} |" for r in info["evaluations"]) + "\n"
    return str(cls(text))


def refusal(status: int, message: str, hub: str, repo_id: str) -> UserError | None:
    """The hub's answer as one sentence: a refused token, a name taken by someone else, a full quota."""
    if status == 401:
        return UserError("err.push.bad_token", hub=hub)
    if "quota" in message.lower() or status in (402, 413):
        return UserError("err.push.quota", hub=hub, repo=repo_id)
    if status in (403, 409):
        return UserError("err.push.name_taken", hub=hub, repo=repo_id)
    return None
