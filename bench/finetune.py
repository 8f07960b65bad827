"""Fine-tune throughput: the `finetune` job against a plain peft + transformers Trainer script on the
same model, data and settings, in one run. Prints tokens/s ratios and peak RSS of each.

    .venv/bin/python bench/finetune.py [--model PATH] [--data shubot|short] [--steps 12] [--rows 96]
                                       [--max-length 512] [--repeat 1]

  1. same settings, no packing on either side           (goal: job ≥ 0.95× the Trainer)
  2. the job with packing vs the Trainer without it,    (goal: ≥ 1.5×, short samples: padding is waste)
     both counting only real (non-pad) tokens

Without --model it uses the bundled SmolLM2-135M (backend.models.ensure_bundled) in a scratch workspace.
--data: the bundled ShuBot identity set (answers of 30-100 tokens), or `short`, the bundled
mini_instructions set (one-line Alpaca instructions, answers of a few tokens) repeated to --rows.
Each side runs in its own process; peak RSS is each process's own ru_maxrss. --repeat N runs the three
sides N times in turn and prints medians (the ratios taken within each round), for a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)          # not bench/: its modules (queue.py, datasets.py) would shadow real ones

PLAIN = r'''
import json, sys, time, torch, resource
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, TrainerCallback
from transformers import DataCollatorForSeq2Seq
from peft import LoraConfig, get_peft_model
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(cfg["model"])
rows = [json.loads(l)["messages"] for l in open(cfg["data"])][: cfg["rows"]]
feats = []
for msgs in rows:                           # the usual recipe: prompt masked, answer trained, no packing
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"][: cfg["max_length"]]
    feats.append({"input_ids": ids, "labels": [-100] * len(p) + ids[len(p):]})
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
real = []
class Count(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 1:
            real.append(time.monotonic())
args = TrainingArguments(output_dir=cfg["out"], per_device_train_batch_size=cfg["batch"], gradient_accumulation_steps=1,
                         learning_rate=1e-4, max_steps=cfg["steps"], logging_steps=1000, save_strategy="no",
                         report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="cosine",
                         warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, disable_tqdm=True)
coll = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
tr = Trainer(model=model, args=args, train_dataset=feats, data_collator=coll, callbacks=[Count()])
t0 = time.monotonic()
tr.train()
dt = time.monotonic() - real[0]
avg = sum(len(f["input_ids"]) for f in feats) / len(feats)      # the sampler shuffles: count the mean row
tokens = avg * cfg["batch"] * (cfg["steps"] - 1)
print(json.dumps({"tokens_per_s": tokens / dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_job(home: Path, spec: dict) -> dict:
    """One finetune job through the real worker; tokens/s from its metrics (first step left out)."""
    from backend import logs, queue
    env = dict(os.environ, WORKBENCH_HOME=str(home), PYTHONPATH=str(ROOT))
    os.environ["WORKBENCH_HOME"] = str(home)
    job_id = queue.submit("finetune", spec, home=home)
    subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    events, _ = logs.read_events(job_id, home=home)
    m = [e for e in events if e["type"] == "metric" and "tokens_per_s" in e][1:]
    if not m:
        raise SystemExit(f"job {job_id} failed:\n" + logs.tail(job_id, 30, home))
    # tokens/s over the timed steps: tokens = rate × step time summed, so weight by time
    t = [m[i]["t"] - m[i - 1]["t"] for i in range(1, len(m))]
    tokens = sum(p["tokens_per_s"] * dt for p, dt in zip(m[1:], t))
    return {"tokens_per_s": tokens / sum(t), "rss_mb": logs.result(job_id, home)["peak_rss_mb"]}


def run_plain(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a transformers model folder (default: the bundled SmolLM2-135M)")
    ap.add_argument("--data", choices=["shubot", "short"], default="shubot")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    home = scratch / "home"
    home.mkdir()
    os.environ["WORKBENCH_HOME"] = str(home)
    from backend import models
    from backend.store import open_store
    if a.model:
        model = Path(a.model).resolve()
    else:
        shared = Path(os.environ.get("BENCH_FT_HOME", ROOT / "workspace"))
        model = models.ensure_bundled(shared, log=lambda *x: None)
    open_store(home).put("model", "m", str(model))
    from backend import datasets
    source = ROOT / "assets" / "datasets" / ("shubot_self_cognition.jsonl" if a.data == "shubot"
                                             else "mini_instructions.jsonl")
    convs = datasets.load_messages(source)
    convs = (convs * (a.rows // len(convs) + 1))[:a.rows]          # both sides read these conversations
    (home / "datasets").mkdir()
    data = home / "datasets" / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in convs), encoding="utf-8")
    common = {"base_model": "m", "datasets": ["d.jsonl"], "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
              "max_length": a.max_length, "max_steps": a.steps, "batch_size": a.batch, "grad_accum": 1,
              "gradient_checkpointing": False, "save_steps": 10_000, "max_samples": a.rows, "device": "cpu", "warmup_ratio": 0.0,
              "lr": 1e-4}
    rounds = []
    for _ in range(a.repeat):
        plain = run_plain({"model": str(model), "data": str(data), "rows": a.rows, "max_length": a.max_length,
                           "steps": a.steps, "batch": a.batch, "r": 16, "alpha": 32, "out": str(scratch / "plain")})
        job = run_job(home, {**common, "packing": False})
        packed = run_job(home, {**common, "packing": True})
        rounds.append((plain, job, packed))
        print(f"round {len(rounds)}: tokens/s plain {plain['tokens_per_s']:.1f}, job {job['tokens_per_s']:.1f}, "
              f"packed {packed['tokens_per_s']:.1f}", flush=True)
    med = lambda i, k: statistics.median(r[i][k] for r in rounds)   # noqa: E731
    ratio = lambda i: statistics.median(r[i]["tokens_per_s"] / r[0]["tokens_per_s"] for r in rounds)   # noqa: E731
    print(f"model {model.name}, data {a.data}, {a.rows} rows, batch {a.batch}, max_length {a.max_length}, {a.steps} steps, "
          f"{os.cpu_count()} CPUs, {a.repeat} round(s), medians")
    for i, label in enumerate(("plain peft + Trainer (no packing):", "finetune job, no packing:         ",
                               "finetune job, packing:            ")):
        print(f"{label} {med(i, 'tokens_per_s'):8.1f} tokens/s   peak RSS {med(i, 'rss_mb'):.0f} MB")
    print(f"same settings:  job / Trainer = {ratio(1):.2f}x   (goal >= 0.95x)")
    print(f"packing:        job packed / Trainer unpacked = {ratio(2):.2f}x   (goal >= 1.5x)")


if __name__ == "__main__":
    main()
