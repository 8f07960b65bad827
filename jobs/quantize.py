"""quantize: a smaller copy of a registry model, registered as a model with its lineage.

``awq_w4a16`` runs ``lmdeploy lite auto_awq`` (the lmdeploy engine's own CLI, on CUDA); ``bnb_nf4``
loads the model with bitsandbytes 4-bit NF4 weights and saves it with its quantisation config, which
the transformers server loads as it is. Writes ``<home>/models/<name>``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from backend.workspace import models, remote_code
from backend.core.errors import BAD_INPUT, CRASH
from backend.kinds.quantize import Spec, out_name
from backend.core.store import open_store
from jobs.common import Job, JobError, run


def awq_command(spec: Spec, src: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "lmdeploy"), "lite", "auto_awq", str(src), "--work-dir", str(out),
           "--calib-dataset", spec.calib_dataset, "--calib-samples", str(spec.calib_samples),
           "--calib-seqlen", str(spec.calib_seqlen), "--w-bits", "4", "--w-group-size", str(spec.group_size)]


def awq(spec: Spec, src: Path, out: Path) -> None:
    cmd = awq_command(spec, src, out)
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode != 0:
        raise JobError("lmdeploy lite auto_awq failed (see the log above)", CRASH,
                       "fewer calib_samples or a shorter calib_seqlen if it ran out of memory")


def nf4(src: Path, out: Path, remote: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    cuda = torch.cuda.is_available()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map="cuda" if cuda else "cpu",
                                                 trust_remote_code=remote)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src, trust_remote_code=remote).save_pretrained(out)


def main(spec: Spec, job: Job) -> dict:
    entry = open_store(job.home).get("model", spec.model)
    if entry is None:
        raise JobError(f"no model named {spec.model!r} in the registry", BAD_INPUT)
    name = out_name(spec)
    folder = job.home / "models" / name
    job.check_name("model", name)
    tmp = folder.with_name(f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    remote = remote_code.trust(entry.path, job.home)
    job.progress(0, 2, "steps", f"quantizing {spec.model} ({spec.method})", force=True)
    if spec.method == "awq_w4a16":
        awq(spec, Path(entry.path), tmp)
    else:
        nf4(Path(entry.path), tmp, remote)
    job_id = job.id
    lineage = {"base_model": spec.model, "quantized_from": spec.model, "method": spec.method, "quantize_job": job_id,
               **({"calib_dataset": spec.calib_dataset, "calib_samples": spec.calib_samples,
                   "group_size": spec.group_size} if spec.method == "awq_w4a16" else {})}
    (tmp / "workbench.json").write_text(json.dumps({"lineage": lineage}, ensure_ascii=False, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    models.register(name, folder, "quantize", job_id=job_id, owner=job.owner, home=job.home, lineage=lineage,
                    quantized_from=spec.model, quant_method=spec.method, trust_remote_code=remote)
    job.progress(2, 2, "steps", "quantized", force=True)
    print(f"model {name!r} saved to {folder}", flush=True)
    return {"model": name, "path": str(folder), "method": spec.method}


if __name__ == "__main__":
    run(main, Spec)
