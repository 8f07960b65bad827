"""merge: fold a LoRA adapter into its base model and register the result as a model.

Writes ``<home>/models/<name>`` (safetensors + tokenizer) and a registry "model" entry whose meta
records the lineage: base model, adapter, datasets and the fine-tune job.
"""
from __future__ import annotations

import json
import shutil


from backend.pipeline import finetune as ft
from backend.workspace import models, remote_code
from backend.core.errors import BAD_INPUT
from backend.kinds.merge import Spec
from backend.core.store import open_store
from jobs.common import Job, JobError, run


def main(spec: Spec, job: Job) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    store = open_store(job.home)
    entry = store.get("adapter", spec.adapter)
    if entry is None:
        raise JobError(f"no adapter {spec.adapter!r} in the registry", BAD_INPUT)
    meta = entry.meta or {}
    try:
        base_path, base_meta = ft.resolve_model(meta.get("base_model", ""), job.home)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT, "register the adapter's base model again") from None
    remote = remote_code.trust(base_path, job.home)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(spec.dtype, "auto")
    name = spec.name or f"{spec.adapter}-merged"
    job.progress(0, 3, "steps", f"loading {meta.get('base_model')}", force=True)
    images = meta.get("modality") == "image_text"           # an image-text fine-tune: the whole VLM, its processor
    loader = AutoModelForImageTextToText if images else AutoModelForCausalLM
    model = loader.from_pretrained(base_path, dtype=dtype, trust_remote_code=remote)
    job.progress(1, 3, "steps", f"applying {spec.adapter}", force=True)
    model = PeftModel.from_pretrained(model, entry.path).merge_and_unload()
    folder = job.home / "models" / name
    job.check_name("model", name)
    tmp = folder.with_name(f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    job.progress(2, 3, "steps", f"saving {folder}", force=True)
    model.save_pretrained(tmp)
    (AutoProcessor if images else AutoTokenizer).from_pretrained(entry.path, trust_remote_code=remote).save_pretrained(tmp)
    lineage = {"base_model": meta.get("base_model"), "adapter": spec.adapter, "datasets": meta.get("datasets", []),
               "finetune_job": meta.get("job"), "merge_job": job.id}
    (tmp / "workbench.json").write_text(json.dumps({"lineage": lineage}, ensure_ascii=False, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    models.register(name, folder, "merge", job_id=job.id, owner=job.owner, home=job.home, lineage=lineage,
                    base_model=meta.get("base_model"), adapter=spec.adapter, metrics=meta.get("metrics", {}),
                    trust_remote_code=remote)
    job.progress(3, 3, "steps", "merged", force=True)
    print(f"model {name!r} saved to {folder}", flush=True)
    return {"model": name, "path": str(folder)}


if __name__ == "__main__":
    run(main, Spec)
