"""Fine-tune throughput: the `finetune` job against a plain peft + transformers Trainer script on the
same model, data and settings, in one run. Prints tokens/s ratios and peak RSS of each.

    .venv/bin/python bench/finetune.py [--model PATH] [--data shubot|short] [--steps 12] [--rows 96]
                                       [--max-length 512] [--repeat 1]

  1. same settings, no packing on either side           (goal: job ≥ 0.95× the Trainer)
  2. the job with packing vs the Trainer without it,    (goal: ≥ 1.5×, short samples: padding is waste)
     both counting only real (non-pad) tokens

Without --model it uses the bundled SmolLM2-135M (backend.workspace.models.ensure_bundled) in a scratch workspace.
--data: the bundled ShuBot identity set (answers of 30-100 tokens), or `short`, the bundled
mini_instructions set (one-line Alpaca instructions, answers of a few tokens) repeated to --rows.
Each side runs in its own process; peak RSS is each process's own ru_maxrss. --repeat N runs the three
sides N times in turn and prints medians (the ratios taken within each round), for a busy machine.

Measured 2026-11-30 on a quiet machine (2 cores; figures in docs/finetune.md, Benchmark), --repeat 3:
packing with pieces of <= 384 tokens, short set 1.61x the Trainer's tokens/s at 0.97x its peak RSS
(goal >= 1.5x at <= 1.2x); ShuBot 1.27x at 1.12x (the ceiling there is ~1.37x at equal math); the job
unpacked 1.17x / 0.99x. Other lines (ShuBot, medians of 2-3 rounds): pretrain 1.13x, tools 1.01x, DPO 0.99x,
ORPO 0.94x (0.91-1.07 by round), KTO 0.99x.
Image-text (2026-12-07, 2 busy shared cores): samples/s 1.00x the Trainer's at 0.90x its peak RSS (one
round), 1.21x / 0.91x (medians of 3 busy rounds) (goal >= 1.0x at <= 1.2x).
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

# The plain-Trainer baselines (run in a subprocess each): the imports, then, once a script has built its
# features, the same LoRA model, step timer and TrainingArguments for both.
TRAINER_HEAD = r'''
import json, sys, time, torch, resource
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, TrainerCallback
from transformers import DataCollatorForSeq2Seq
from peft import LoraConfig, get_peft_model
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(cfg["model"])
'''

TRAINER_SETUP = r'''
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
'''

PLAIN = TRAINER_HEAD + r'''
rows = [json.loads(l)["messages"] for l in open(cfg["data"])][: cfg["rows"]]
feats = []
for msgs in rows:                           # the usual recipe: prompt masked, answer trained, no packing
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"][: cfg["max_length"]]
    feats.append({"input_ids": ids, "labels": [-100] * len(p) + ids[len(p):]})
''' + TRAINER_SETUP + r'''
coll = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
tr = Trainer(model=model, args=args, train_dataset=feats, data_collator=coll, callbacks=[Count()])
t0 = time.monotonic()
tr.train()
dt = time.monotonic() - real[0]
avg = sum(len(f["input_ids"]) for f in feats) / len(feats)      # the sampler shuffles: count the mean row
tokens = avg * cfg["batch"] * (cfg["steps"] - 1)
print(json.dumps({"tokens_per_s": tokens / dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

PLAIN_FEATS = TRAINER_HEAD + r'''
if cfg["kind"] == "clm":
    # run_clm's recipe: every document's tokens (+ EOS) concatenated, cut into blocks of max_length
    flat = []
    for line in open(cfg["data"]):
        ids = tok(json.loads(line)["text"])["input_ids"]
        flat += ids + ([tok.eos_token_id] if ids[-1:] != [tok.eos_token_id] else [])
    L = cfg["max_length"]
    feats = [{"input_ids": flat[i:i + L], "labels": flat[i:i + L]} for i in range(0, len(flat) - L + 1, L)]
else:                                       # rows already rendered and masked: padded batches, no packing
    feats = [json.loads(l) for l in open(cfg["data"])]
''' + TRAINER_SETUP + r'''
pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
counts = []                                 # real tokens of each batch, in the order the steps take them
def coll(batch):
    counts.append(sum(len(f["input_ids"]) for f in batch))
    return pad(batch)
tr = Trainer(model=model, args=args, train_dataset=feats, data_collator=coll, callbacks=[Count()])
tr.train()
dt = time.monotonic() - real[0]
tokens = sum(counts[1:cfg["steps"]])
print(json.dumps({"tokens_per_s": tokens / dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

PLAIN_PREF = r'''
import json, sys, time, torch, resource
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from peft import LoraConfig, get_peft_model
cfg = json.loads(sys.argv[1])
obj = cfg["objective"]
if obj == "dpo":
    from trl import DPOConfig as Config, DPOTrainer as T
elif obj == "kto":
    from trl import KTOConfig as Config, KTOTrainer as T
else:
    from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as T
torch.manual_seed(42)
tok = AutoTokenizer.from_pretrained(cfg["model"])
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
stamps = []
class Times(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            stamps.append(time.monotonic())
rows = [json.loads(l) for l in open(cfg["data"])]
args = Config(output_dir=cfg["out"], per_device_train_batch_size=cfg["batch"], gradient_accumulation_steps=1,
              learning_rate=1e-4, max_steps=cfg["steps"], lr_scheduler_type="cosine", warmup_steps=0.0,
              weight_decay=0.0, max_grad_norm=1.0, seed=42, logging_steps=1, save_strategy="no", report_to=[],
              use_cpu=True, bf16=False, fp16=False, max_length=cfg["max_length"], beta=0.1, disable_tqdm=True,
              gradient_checkpointing=False, remove_unused_columns=False)
tr = T(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Times()])
tr.train()
ds = tr.train_dataset                      # the tokenized rows both sides train on: tokens per row
cols = [c for c in ds.column_names if c.endswith("input_ids") or c.endswith("_ids")]
per_row = sum(len(x) for c in cols for x in ds[c]) / len(ds)
per_step = per_row * cfg["batch"]
dt = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
print(json.dumps({"tokens_per_s": per_step / dt, "s_per_step": dt, "tokens_per_step": per_step, "columns": cols,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

# GRPO: TRL's GRPOTrainer called directly with the job's own GRPOConfig (jobs/grpo.py's config()) and reward
# (backend/pipeline/rewards.py's length), on the same prompts; tokens/s = TRL's num_tokens between the first and last log
PLAIN_GRPO = r'''
import json, sys, time, torch, resource
sys.path.insert(0, cfg_root := json.loads(sys.argv[1])["root"])
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from peft import LoraConfig, get_peft_model
from trl import GRPOTrainer
from backend.pipeline import rewards
from backend.kinds.finetune import Spec
from jobs.grpo import config
cfg = json.loads(sys.argv[1])
spec = Spec.model_validate(cfg["spec"])
torch.manual_seed(spec.seed)
tok = AutoTokenizer.from_pretrained(cfg["model"])
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
target = spec.rewards[0].target
def length(prompts, completions, **kw):
    return rewards.length([c[-1]["content"] for c in completions], target)
seen = []
class Times(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "num_tokens" in logs:
            seen.append((time.monotonic(), float(logs["num_tokens"])))
rows = [json.loads(l) for l in open(cfg["data"])][:spec.max_samples or None]
tr = GRPOTrainer(model=model, reward_funcs=[length], args=config(spec, cfg["out"], True, "torch.float32"),
                 train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Times()])
tr.train()
(t0, n0), (t1, n1) = seen[0], seen[-1]
print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

# image-text: peft + a plain transformers Trainer on the job's own rendering of the same rows
PLAIN_VLM = r'''
import json, sys, time, torch, resource
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments, TrainerCallback
from peft import LoraConfig, get_peft_model
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
proc = AutoProcessor.from_pretrained(cfg["model"])
proc.tokenizer.padding_side = "right"
rows = [json.loads(l) for l in open(cfg["data"])]      # {"text", "images", "labels"}: the job's own rendering
model = AutoModelForImageTextToText.from_pretrained(cfg["model"], dtype=torch.float32)
for p in model.parameters():
    p.requires_grad = False
model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                         target_modules=cfg["targets"], task_type="CAUSAL_LM"))
stamps, counts = [], []
class Times(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        stamps.append(time.monotonic())
def coll(batch):                           # the usual recipe: the processor per batch, labels padded with -100
    images = [Image.open(p).convert("RGB") for r in batch for p in r["images"]]
    enc = proc(text=[r["text"] for r in batch], images=images or None, return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    enc["labels"] = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
    counts.append(sum(len(r["labels"]) for r in batch))
    return dict(enc)
args = TrainingArguments(output_dir=cfg["out"], per_device_train_batch_size=cfg["batch"], gradient_accumulation_steps=1,
                         learning_rate=1e-4, max_steps=cfg["steps"], logging_steps=1000, save_strategy="no",
                         report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="cosine",
                         warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, disable_tqdm=True,
                         remove_unused_columns=False)
Trainer(model=model, args=args, train_dataset=rows, data_collator=coll, callbacks=[Times()]).train()
dt = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
tokens = sum(counts[1:len(stamps)]) / (len(stamps) - 1)
print(json.dumps({"samples_per_s": cfg["batch"] / dt, "tokens_per_s": tokens / dt, "s_per_step": dt,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

# Qwen2.5's tool format (tools listed in the system turn, calls as <tool_call>{json}</tool_call>, results as
# <tool_response> in a user turn) on SmolLM2's ChatML tokens: the bundled model's own template has no tools
TOOL_TEMPLATE = r"""{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}

# Tools

You may call one or more functions to assist with the user query.
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0]['role'] != 'system' %}<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{% if not tools %}<|im_start|>system
{{ message['content'] }}<|im_end|>
{% endif %}
{%- elif message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% elif message['role'] == 'assistant' %}<|im_start|>assistant
{{ message['content'] }}
{%- for call in message.get('tool_calls') or [] %}{% if loop.first and message['content'] %}
{% endif %}<tool_call>
{"name": "{{ call['function']['name'] }}", "arguments": {{ call['function']['arguments'] | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CITIES = ["Paris", "Beijing", "Lagos", "Lima", "Oslo", "Hanoi", "Cairo", "Quito", "Perth", "Tokyo", "Dakar", "Riga"]


def tool_rows(n: int) -> list[dict]:
    """OpenAI-style tool-calling conversations: a question, the call, the tool's result, the answer."""
    out = []
    for i in range(n):
        city, t = CITIES[i % len(CITIES)], 5 + (7 * i) % 30
        out.append({"tools": [WEATHER], "messages": [
            {"role": "user", "content": f"What's the weather like in {city} right now? I need to know what to wear."},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "content": json.dumps({"city": city, "temp_c": t, "sky": "cloudy" if i % 2 else "clear"})},
            {"role": "assistant", "content": f"It is {t} °C and {'cloudy' if i % 2 else 'clear'} in {city}: "
                                             f"{'take a warm coat' if t < 15 else 'a light jacket is enough'}."}]})
    return out


def run_job(home: Path, spec: dict) -> dict:
    """One finetune job through the real worker; tokens/s from its metrics (first step left out), and the
    mean time of a step between the first and the last metric point (preference runs log no tokens/s)."""
    from backend.runtime import logs, queue
    env = dict(os.environ, WORKBENCH_HOME=str(home), PYTHONPATH=str(ROOT))
    os.environ["WORKBENCH_HOME"] = str(home)
    job_id = queue.submit("finetune", spec, home=home, owner="local")
    subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    events, _ = logs.read_events(job_id, home=home)
    m = [e for e in events if e["type"] == "metric" and "loss" in e]
    result = logs.result(job_id, home) if len(m) > 2 else None
    if not result:
        raise SystemExit(f"job {job_id} failed:\n" + logs.tail(job_id, 30, home=home))
    out = {"s_per_step": (m[-1]["t"] - m[0]["t"]) / (len(m) - 1), "rss_mb": result["peak_rss_mb"]}
    if "tokens" in m[-1]:      # GRPO: TRL's cumulative num_tokens, between the first and the last log
        out["tokens_per_s"] = (m[-1]["tokens"] - m[0]["tokens"]) / (m[-1]["t"] - m[0]["t"])
        return out
    m = [e for e in m if "tokens_per_s" in e][1:]
    if m:   # tokens/s over the timed steps: tokens = rate × step time summed, so weight by time
        t = [m[i]["t"] - m[i - 1]["t"] for i in range(1, len(m))]
        tokens = sum(p["tokens_per_s"] * dt for p, dt in zip(m[1:], t))
        out["tokens_per_s"] = tokens / sum(t)
    return out


def run_plain(cfg: dict, script: str = PLAIN) -> dict:
    out = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


OBJECTIVES = ("sft", "pretrain", "tools", "dpo", "orpo", "kto", "grpo", "image_text")
VLM_HIDDEN = 256             # the image-text line's LLaVA-style model, built offline (tests/fixtures/tiny_vlm.py)


def image_text_line(home: Path, scratch: Path, convs: list, a, new: dict) -> tuple:
    """The image-text line: a LLaVA-style model (a CLIP tower, a Llama LM, random weights) built here, the
    conversations each asked about one of four coloured images; the baseline trains the job's own
    rendering of the same rows (ids, labels, images) with peft + Trainer, LoRA on the same modules."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from backend.pipeline import finetune as ft
    from backend.workspace import image_text
    from jobs.finetune_image import load_images, lora_modules, tokenize
    from tests.fixtures.tiny_vlm import make_tiny_llava
    model = make_tiny_llava(scratch / "llava", hidden=VLM_HIDDEN)
    from backend.core.store import open_store
    open_store(home).put("model", "vlm", str(model), owner="local")
    folder = home / "datasets" / "vlm"
    (folder / "images").mkdir(parents=True)
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 220, 20)}
    for name, rgb in colours.items():
        Image.new("RGB", (64, 64), rgb).save(folder / "images" / f"{name}.png")
    names = list(colours)
    rows = [{"messages": [{"role": "user", "content": "<image>" + c[0]["content"]}, c[-1]],
             "images": [f"images/{names[i % 4]}.png"]} for i, c in enumerate(convs)]
    write_jsonl(folder / "vlm.jsonl", rows)
    processor = AutoProcessor.from_pretrained(model)
    feats = []
    for chat, files in image_text.load_rows(folder / "vlm.jsonl"):
        out = tokenize(processor, chat, load_images(files), a.max_length) if ft.usable(chat) else None
        if out:
            feats.append({"text": out[2], "images": [str(f) for f in files], "labels": out[1]})
    rendered = write_jsonl(scratch / "vlm-rendered.jsonl", feats)
    targets = lora_modules(AutoModelForImageTextToText.from_pretrained(model), ["all-linear"])
    cfg = {"model": str(model), "data": str(rendered), "steps": a.new_steps, "batch": a.batch, "r": 16, "alpha": 32,
           "targets": targets, "out": str(scratch / "plain-vlm")}
    return ("peft + Trainer, processor per batch", "finetune job, modality image_text", cfg, PLAIN_VLM,
            dict(new, base_model="vlm", datasets=["vlm/vlm.jsonl"], modality="image_text"))


def tools_model(model: Path, folder: Path) -> Path:
    """The model's files linked into ``folder`` with TOOL_TEMPLATE as its chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "chat_template.jinja").write_text(TOOL_TEMPLATE, encoding="utf-8")
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a transformers model folder (default: the bundled SmolLM2-135M)")
    ap.add_argument("--data", choices=["shubot", "short"], default="shubot")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--objectives", default=",".join(OBJECTIVES),
                    help=f"comma-separated, of {', '.join(OBJECTIVES)} (sft: the three lines above)")
    ap.add_argument("--new-steps", type=int, default=8, help="steps of the pretrain / tools / preference lines")
    ap.add_argument("--pref-batch", type=int, default=2, help="pairs (KTO: rows) per step of the preference lines")
    a = ap.parse_args()
    wanted = [o for o in a.objectives.split(",") if o]
    if set(wanted) - set(OBJECTIVES):
        raise SystemExit(f"--objectives: unknown {sorted(set(wanted) - set(OBJECTIVES))}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    home = scratch / "home"
    home.mkdir()
    os.environ["WORKBENCH_HOME"] = str(home)
    from backend.workspace import models
    from backend.core.store import open_store
    if a.model:
        model = Path(a.model).resolve()
    else:
        shared = Path(os.environ.get("BENCH_FT_HOME", ROOT / "workspace"))
        model = models.ensure_bundled(shared, log=lambda *x: None)
    open_store(home).put("model", "m", str(model), owner="local")
    from backend.workspace import datasets
    source = ROOT / "assets" / "datasets" / ("shubot_self_cognition.jsonl" if a.data == "shubot"
                                             else "mini_instructions.jsonl")
    convs = datasets.load_messages(source)
    convs = (convs * (a.rows // len(convs) + 1))[:a.rows]          # both sides read these conversations
    (home / "datasets").mkdir()
    data = write_jsonl(home / "datasets" / "d.jsonl", [{"messages": m} for m in convs])
    common = {"base_model": "m", "datasets": ["d.jsonl"], "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
              "max_length": a.max_length, "max_steps": a.steps, "batch_size": a.batch, "grad_accum": 1,
              "gradient_checkpointing": False, "save_steps": 10_000, "max_samples": a.rows, "device": "cpu", "warmup_ratio": 0.0,
              "lr": 1e-4}
    plain_cfg = {"model": str(model), "rows": a.rows, "max_length": a.max_length, "steps": a.new_steps,
                 "batch": a.batch, "r": 16, "alpha": 32, "out": str(scratch / "plain")}
    new = dict(common, max_steps=a.new_steps)
    lines = {}          # objective → (baseline label, job label, baseline config, script, job spec)
    if "pretrain" in wanted:        # the same conversations as plain documents
        texts = write_jsonl(home / "datasets" / "text.jsonl",
                            [{"text": "\n".join(m["content"] for m in c)} for c in convs])
        lines["pretrain"] = ("transformers Trainer, run_clm blocks", "finetune job, objective pretrain (packed)",
                             dict(plain_cfg, kind="clm", data=str(texts)), PLAIN_FEATS,
                             dict(new, objective="pretrain", datasets=["text.jsonl"], packing=True))
    if "tools" in wanted:           # tool calls rendered by a tool-aware template, the same rows on both sides
        from backend.pipeline import finetune as ft
        from jobs.finetune import tokenize
        from transformers import AutoTokenizer
        tmodel = tools_model(model, scratch / "m-tools")
        open_store(home).put("model", "m-tools", str(tmodel), owner="local")
        path = write_jsonl(home / "datasets" / "tools.jsonl", tool_rows(a.rows))
        tok = AutoTokenizer.from_pretrained(tmodel)
        feats = [tokenize(tok, c, a.max_length) for c in ft.load_conversations([path]) if ft.usable(c)]
        rendered = write_jsonl(scratch / "tools-rendered.jsonl",
                               [{"input_ids": ids, "labels": labels} for ids, labels in filter(None, feats)])
        lines["tools"] = ("peft + Trainer on the rendered rows", "finetune job, tool calls (packed)",
                          dict(plain_cfg, model=str(tmodel), kind="rows", data=str(rendered)), PLAIN_FEATS,
                          dict(new, base_model="m-tools", datasets=["tools.jsonl"], packing=True))
    prefs = [o for o in ("dpo", "orpo", "kto") if o in wanted]
    if prefs:                       # the same prompts, each answer against another row's (KTO: labelled)
        other = lambda i: convs[(i + 1) % len(convs)][-1]["content"]     # noqa: E731
        pairs = write_jsonl(home / "datasets" / "pairs.jsonl", [
            {"prompt": c[:-1], "chosen": [c[-1]], "rejected": [{"role": "assistant", "content": other(i)}]}
            for i, c in enumerate(convs)])
        labelled = write_jsonl(home / "datasets" / "kto.jsonl", [
            {"prompt": c[:-1], "completion": [c[-1] if i % 2 == 0 else {"role": "assistant", "content": other(i)}],
             "label": i % 2 == 0} for i, c in enumerate(convs)])
        for o in prefs:
            d = labelled if o == "kto" else pairs
            lines[o] = (f"TRL {o.upper()} trainer called directly", f"finetune job, objective {o}",
                        dict(plain_cfg, objective=o, data=str(d), batch=a.pref_batch), PLAIN_PREF,
                        dict(new, objective=o, datasets=[d.name], batch_size=a.pref_batch))
    if "grpo" in wanted:            # the same prompts, 4 answers of <= 32 tokens each, a length reward, LoRA, no KL
        prompts_ = write_jsonl(home / "datasets" / "prompts.jsonl", [{"prompt": c[:-1]} for c in convs])
        grpo = dict(new, objective="grpo", datasets=[prompts_.name], batch_size=4, num_generations=4,
                    max_completion_length=32, beta=0.0, scheduler="cosine", rewards=[{"kind": "length", "target": 60}])
        lines["grpo"] = ("TRL GRPOTrainer called directly", "finetune job, objective grpo",
                         dict(plain_cfg, root=str(ROOT), data=str(prompts_), spec=grpo), PLAIN_GRPO, grpo)
    if "image_text" in wanted:
        lines["image_text"] = image_text_line(home, scratch, convs, a, new)
    rounds = []
    for _ in range(a.repeat):
        r = {}
        if "sft" in wanted:
            r["plain"] = run_plain(dict(plain_cfg, data=str(data), steps=a.steps))
            r["job"] = run_job(home, {**common, "packing": False})
            r["packed"] = run_job(home, {**common, "packing": True})
            print(f"round {len(rounds) + 1}: tokens/s plain {r['plain']['tokens_per_s']:.1f}, "
                  f"job {r['job']['tokens_per_s']:.1f}, packed {r['packed']['tokens_per_s']:.1f}", flush=True)
        for o, (_, _, cfg, script, spec) in lines.items():
            base, job = run_plain(cfg, script), run_job(home, spec)
            if "tokens_per_s" not in job:       # preference: the same rows in the same order on both sides
                job["tokens_per_s"] = base["tokens_per_step"] / job["s_per_step"]
            job["samples_per_s"] = spec.get("batch_size", 1) / job["s_per_step"]
            r[o] = (base, job)
            print(f"round {len(rounds) + 1}: {o}: tokens/s baseline {base['tokens_per_s']:.1f}, "
                  f"job {job['tokens_per_s']:.1f}", flush=True)
        rounds.append(r)
    print(f"model {model.name}, data {a.data}, {a.rows} rows, batch {a.batch}, max_length {a.max_length}, "
          f"{a.steps} steps (new lines: {a.new_steps} steps, preference batch {a.pref_batch}), "
          f"{os.cpu_count()} CPUs, {a.repeat} round(s), medians")
    if "sft" in wanted:
        med = lambda k, f: statistics.median(r[k][f] for r in rounds)   # noqa: E731
        ratio = lambda k: statistics.median(r[k]["tokens_per_s"] / r["plain"]["tokens_per_s"] for r in rounds)  # noqa: E731
        for k, label in (("plain", "plain peft + Trainer (no packing):"), ("job", "finetune job, no packing:         "),
                         ("packed", "finetune job, packing:            ")):
            print(f"{label} {med(k, 'tokens_per_s'):8.1f} tokens/s   peak RSS {med(k, 'rss_mb'):.0f} MB")
        print(f"same settings:  job / Trainer = {ratio('job'):.2f}x   (goal >= 0.95x)")
        print(f"packing:        job packed / Trainer unpacked = {ratio('packed'):.2f}x   (goal >= 1.5x)   "
              f"peak RSS {statistics.median(r['packed']['rss_mb'] / r['plain']['rss_mb'] for r in rounds):.2f}x "
              f"(goal <= 1.2x)")
    if lines:
        print("\n| objective | baseline | baseline tokens/s | job tokens/s | tokens/s job / baseline (goal >= 1.0x) "
              "| peak RSS baseline / job | RSS job / baseline |\n|---|---|---|---|---|---|---|")
    for o, (blabel, jlabel, *_) in lines.items():
        m = lambda i, f: statistics.median(r[o][i][f] for r in rounds)   # noqa: E731
        q = lambda f: statistics.median(r[o][1][f] / r[o][0][f] for r in rounds)   # noqa: E731
        print(f"| {o} | {blabel} | {m(0, 'tokens_per_s'):.1f} | {m(1, 'tokens_per_s'):.1f} | "
              f"**{q('tokens_per_s'):.2f}×** | {m(0, 'rss_mb') / 1024:.1f} / {m(1, 'rss_mb') / 1024:.1f} GB | "
              f"{q('rss_mb'):.2f}× |")
    if "image_text" in lines:
        r_ = [r["image_text"] for r in rounds]
        print(f"\nimage-text: samples/s job / Trainer = "
              f"{statistics.median(j['samples_per_s'] / b['samples_per_s'] for b, j in r_):.2f}x (goal >= 1.0x), "
              f"peak RSS job / Trainer = {statistics.median(j['rss_mb'] / b['rss_mb'] for b, j in r_):.2f}x "
              f"(goal <= 1.2x); samples/s {statistics.median(b['samples_per_s'] for b, _ in r_):.2f} / "
              f"{statistics.median(j['samples_per_s'] for _, j in r_):.2f}")


if __name__ == "__main__":
    main()
