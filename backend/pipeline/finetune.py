"""Fine-tuning without torch: presets, resolving the model and data, the checks made before a job is
queued, the GPU memory estimate, and the spec as YAML + CLI. ``jobs/finetune.py`` trains.

Everything here reads files cheaply (config.json, safetensors headers, tokenizer.json, the first
rows of each dataset) so the Fine-tune page and ``queue.submit`` answer in well under a second.
"""
from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import yaml

from backend.access import ownership, users
from backend.core import paths
from backend.core.job import Job
from backend.pipeline import preference, rewards
from backend.runtime import events, logs, placement
from backend.workspace import datasets, formats, image_text, prompts, remote_code
from backend.core.errors import UserError
from backend.kinds.vlm import image_text as is_image_text_model
from backend.core.paths import job_dir
from backend.core.registry import Entry
from backend.core.states import JobState
from backend.core.store import open_store


# Fields that may differ between a run and the run it resumes (they don't change the trajectory).
RESUME_FREE = {"name", "resume", "resume_from", "save_steps", "save_total_limit", "gpu_mem_gb", "device",
               "sample_prompts", "sample_images", "preset", "trackers"}

# Training throughput to estimate a run's duration by when this machine has finished no run of the model yet,
# as tokens/s × parameters (a model half the size trains about twice as fast, roughly). CPU: cpu_demo on
# SmolLM2-135M-Instruct, 2 cores: 49 tokens/s alone (issue 16), 18 with five other test runs beside it;
# 40 sits between. GPU: a rough LoRA figure, 7B on one A100-class GPU (~3,000 tokens/s). The first finished
# run of a model replaces it (measured_throughput).
CALIBRATION_TOKEN_PARAMS_S = {"cpu": 40 * 135e6, "gpu": 3000 * 7e9}
STARTUP_S = {"cpu": 30.0, "gpu": 60.0}                  # loading the model, the sample answers before/after
LONG_RUN_S = 30 * 60                                     # the page warns above this

HEAD_NAMES = ("lm_head", "output", "embed_out")          # output heads: never LoRA targets
EMBED_HINTS = ("embed", "wte", "wpe", "tok_embeddings")
CUDA_CONTEXT_GB = 0.8                                    # CUDA context + allocator slack per process


# -- resolving names ---------------------------------------------------------------------------
def resolve_model(name: str, home: Path) -> tuple[Path, dict]:
    """A registry model name (or a folder inside the workspace) → (folder, registry meta)."""
    home = home
    entry = open_store(home).get("model", name)
    if entry:
        path, meta = Path(entry.path), entry.meta or {}
    else:
        try:
            path, meta = paths.inside(home, name, must_exist=True), {}
        except paths.OutsideError:
            raise UserError("err.ft.no_model", name=name) from None
    if not (path / "config.json").exists():
        raise UserError("err.ft.no_config", name=name, path=path)
    return path, meta


def resolve_dataset(name: str, home: Path) -> Path:
    """A registry dataset name, or a file in the workspace's datasets folder or the bundled samples."""
    try:
        return datasets.resolve(name, home)
    except datasets.DatasetError:
        datasets.ensure_samples(home)          # bundled samples are registered by their stem
        try:
            return datasets.resolve(name, home)
        except datasets.DatasetError as e:
            raise UserError("err.ft.dataset", name=name, error=e) from None


def _load_all(read, paths: list[Path], limit: int) -> list:
    out = []
    for p in paths:
        out += read(p, limit=(limit - len(out)) if limit else None)
        if limit and len(out) >= limit:
            break
    return out


def load_conversations(paths: list[Path], limit: int = 0) -> list[list[dict]]:
    """Every row of every dataset as a list of messages ({"role", "content", "loss"?, "tool_calls"?})."""
    return _load_all(datasets.load_messages, paths, limit)


def load_texts(paths: list[Path], limit: int = 0) -> list[str]:
    """Every document of every text dataset (objective pretrain)."""
    return _load_all(datasets.load_texts, paths, limit)


def load_preference_rows(paths: list[Path], objective: str, limit: int = 0) -> list[dict]:
    """Every row of every preference dataset in TRL's form for ``objective`` (dpo, orpo, kto)."""
    return _load_all(lambda p, limit: preference.load_preferences(p, objective, limit), paths, limit)


def load_prompt_rows(paths: list[Path], limit: int = 0) -> list[dict]:
    """Every row of every dataset as a GRPO prompt row (backend/workspace/prompts.py)."""
    return _load_all(prompts.load, paths, limit)


def usable(conv: list[dict]) -> bool:
    """A conversation trains something: an assistant turn (or a message flagged loss) with text or tool calls."""
    return any(formats.trained(m) for m in conv)


def check_tools(convs: list[list[dict]], template, model: str) -> None:
    """Rows with tools or tool calls need a chat template that renders them."""
    if any(formats.uses_tools(c) for c in convs) and not formats.template_has_tools(template):
        raise UserError("err.ft.no_tools", model=model)


# -- the model, read from its files ------------------------------------------------------------
def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def model_info(path: Path) -> dict:
    """Architecture, parameter count and the linear layers (name → (in, out)) of a model folder."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or {}
    get = lambda k, d=0: config.get(k) or text.get(k) or d          # noqa: E731
    info = {"architectures": config.get("architectures") or [], "model_type": config.get("model_type", ""),
            "auto_map": bool(config.get("auto_map")), "hidden": get("hidden_size"),
            "layers": get("num_hidden_layers"), "intermediate": get("intermediate_size"),
            "vocab": get("vocab_size"), "heads": get("num_attention_heads", 1),
            "tied": bool(config.get("tie_word_embeddings", False)), "linears": {}, "params": 0,
            "weight_bytes": 2}
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        for name, t in safetensors_header(f).items():
            if name == "__metadata__":
                continue
            info["params"] += math.prod(t["shape"])
            info["weight_bytes"] = DTYPE_BYTES.get(t["dtype"], 2)
            module = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and len(t["shape"]) == 2 and not any(h in module for h in EMBED_HINTS):
                out_f, in_f = t["shape"]
                info["linears"][module] = (in_f, out_f)
    if not files:   # .bin only: estimate from the config, linear names unknown
        h, L, i, v = info["hidden"], info["layers"], info["intermediate"] or 4 * info["hidden"], info["vocab"]
        info["params"] = L * (4 * h * h + 3 * h * i) + v * h * (1 if info["tied"] else 2)
    return info


def is_head(module: str) -> bool:
    return module.split(".")[-1] in HEAD_NAMES


def lora_targets(info: dict, targets: list[str]) -> dict[str, tuple[int, int]]:
    """The linear layers a target list selects, with peft's rule: a name equals the target or ends
    with ``.target``; ``all-linear`` means every linear layer but the output head."""
    lin = info["linears"]
    if targets == ["all-linear"]:
        return {m: s for m, s in lin.items() if not is_head(m)}
    return {m: s for m, s in lin.items() if any(m == t or m.endswith("." + t) for t in targets)}


# -- memory estimate ---------------------------------------------------------------------------
def estimate(spec, info: dict, gpu: bool = True, row_tokens: int | None = None) -> dict:
    """Peak memory (GB) of a run: weights, trainable state (params + grads + AdamW), activations at
    batch × max_length (or ``row_tokens``: an image-text row's longest, image tokens counted), logits, and the
    CUDA context. Rough but on the safe side."""
    b = 2 if gpu else 4                                    # compute dtype bytes: bf16/fp16 on GPU, fp32 on CPU
    n = info["params"]
    method = spec.method
    h, L, i, v = info["hidden"] or 1, info["layers"] or 1, info["intermediate"] or 4 * (info["hidden"] or 1), info["vocab"] or 1
    targets = lora_targets(info, spec.target_modules) if method != "full" else {}
    r = spec.lora_r
    trainable = sum(r * (a + o) for a, o in targets.values()) if method != "full" else n
    if method == "qlora":
        linear = sum(a * o for a, o in lora_targets(info, ["all-linear"]).values())
        weights = linear * 0.5 * 1.03 + (n - linear) * 2    # NF4 + double-quantised absmax; the rest bf16
    elif method == "full":
        weights = n * 4                                    # fp32 master weights
    else:
        weights = n * b
    state = trainable * (4 + 4 + 8)                        # fp32 params/grads + AdamW moments
    if method == "full":
        state = n * (4 + 8)                                # grads + moments (weights counted above)
    tokens = spec.batch_size * (row_tokens or spec.max_length)
    per_layer = b * (12 * h + 5 * i)                       # saved tensors per token in one decoder layer
    if spec.gradient_checkpointing:
        acts = tokens * (L * b * h + per_layer)            # layer inputs + one layer recomputed
    else:
        acts = tokens * L * per_layer
    logits = tokens * v * (b + 4 + 4)                      # logits, fp32 upcast, their gradient
    gb = 1 / 2**30
    if getattr(spec, "objective", "") == "grpo":            # generation: the KV cache; a full model's reference copy
        acts += 2 * L * h * b * tokens
        if method == "full" and spec.beta > 0:
            weights += n * b
    out = {"weights_gb": weights * gb, "trainable_gb": state * gb, "activations_gb": (acts + logits) * gb,
           "overhead_gb": CUDA_CONTEXT_GB if gpu else 0.0, "params": n, "trainable_params": trainable}
    out["total_gb"] = (out["weights_gb"] + out["trainable_gb"] + out["activations_gb"]) * 1.1 + out["overhead_gb"]
    return {k: round(x, 2) if isinstance(x, float) else x for k, x in out.items()}


# -- prompt lengths (tokenizers + jinja2, no torch) ---------------------------------------------
def token_counter(model_path: Path):
    """A function conversation → (prompt tokens before the first trained message, total tokens),
    or None when the model has no tokenizer.json / chat template to read cheaply."""
    tok_file, cfg_file = model_path / "tokenizer.json", model_path / "tokenizer_config.json"
    if not tok_file.exists() or not cfg_file.exists():
        return None
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    template = cfg.get("chat_template")
    if not template and (model_path / "chat_template.jinja").exists():
        template = (model_path / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(template, str):
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    def raise_exception(msg):
        raise ValueError(msg)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tpl = env.from_string(template)
    tok = Tokenizer.from_file(str(tok_file))
    special = {k: (v if isinstance(v, str) else (v or {}).get("content", "")) for k, v in cfg.items()
               if k.endswith("_token")}

    def count(conv: list[dict]) -> tuple[int, int]:
        msgs, tools = formats.for_template(conv), getattr(conv, "tools", None)
        first = next(k for k, m in enumerate(conv) if formats.trained(m))
        prompt = tpl.render(messages=msgs[:first], tools=tools, add_generation_prompt=msgs[first]["role"] == "assistant",
                            **special) if first else ""
        full = tpl.render(messages=msgs, tools=tools, add_generation_prompt=False, **special)
        enc = lambda s: len(tok.encode(s, add_special_tokens=False).ids)   # noqa: E731
        return enc(prompt), enc(full)
    count.template = template
    return count


# -- the checks before queueing ----------------------------------------------------------------
CHECK_ROWS = 2000            # rows read per submit to check the data (the job reads them all)


def device_problem(method: str, device: str, has_gpu: bool) -> UserError | None:
    """Why a run can't go on this machine's devices (None when it can): the one rule the submit-time check
    and the job both apply."""
    if device == "gpu" and not has_gpu:
        return UserError("err.ft.no_gpu")
    if method == "qlora" and not has_gpu and device != "cpu":
        return UserError("err.ft.qlora_gpu")
    return None


def check(spec, home: Path, gpu_list=None) -> dict:
    """Everything that can be checked before a fine-tune is queued (``spec``: a validated
    ``backend.kinds.finetune.Spec``). Returns the plan (model path, device, memory estimate, warnings);
    raises ValueError with a message meant for the user."""
    home = home
    gpu_list = placement.gpus() if gpu_list is None else gpu_list
    method, device = spec.method, spec.device
    problem = device_problem(method, device, bool(gpu_list))
    if problem:
        raise problem
    on_gpu = bool(gpu_list) and device != "cpu"
    model_path, meta = resolve_model(spec.base_model, home)
    info = model_info(model_path)
    arch = " ".join(info["architectures"]) or info["model_type"] or "?"
    if info["auto_map"] and not remote_code.allowed(model_path, home):
        raise UserError("err.ft.remote_code", model=spec.base_model, arch=arch)
    images = spec.modality == "image_text"
    if images:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
        if not is_image_text_model(config, spec.base_model):
            raise UserError("err.it.not_image_model", model=spec.base_model, arch=arch)
        if not any((model_path / f).exists() for f in ("processor_config.json", "preprocessor_config.json")):
            raise UserError("err.it.no_processor", model=spec.base_model)
        info["linears"] = {m: s for m, s in info["linears"].items() if image_text.part_of(m) == "language"}
    elif not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in info["architectures"]) and not info["auto_map"]:
        raise UserError("err.ft.not_causal", model=spec.base_model, arch=arch)
    if info["linears"] and not lora_targets(info, ["all-linear"]):
        raise UserError("err.ft.no_linears", model=spec.base_model, arch=arch)
    if method != "full" and info["linears"]:
        targets = spec.target_modules
        chosen = lora_targets(info, targets)
        if not chosen:
            names = sorted({m.split(".")[-1] for m in info["linears"] if not is_head(m)})
            raise UserError("err.ft.targets", targets=targets, model=spec.base_model, names=", ".join(names))
        heads = [m for m in chosen if is_head(m)]
        if heads:
            raise UserError("err.ft.head", head=heads[0])
    warnings = ["QLoRA on the CPU: bitsandbytes' CPU kernels are slow; it is for trying the recipe on a small "
                "model, and LoRA is faster here"] if method == "qlora" and not on_gpu else []
    # data: usable rows and prompt length, on the first CHECK_ROWS rows of each dataset
    paths = [resolve_dataset(d, home) for d in spec.datasets]
    pretrain, prefer = spec.objective == "pretrain", spec.objective in preference.OBJECTIVES
    grpo = spec.objective == "grpo"
    if grpo:
        rewards.check_spec(spec)
    if (prefer or grpo) and importlib.util.find_spec("trl") is None:
        raise UserError("err.ft.no_trl", objective=spec.objective)
    if images:
        return check_image_text(spec, home, model_path, info, on_gpu, gpu_list, paths, warnings)
    convs = []
    for name, p in zip(spec.datasets, paths):
        try:
            rows = (load_texts([p], CHECK_ROWS) if pretrain else load_prompt_rows([p], CHECK_ROWS) if grpo else
                    load_preference_rows([p], spec.objective, CHECK_ROWS) if prefer else load_conversations([p], CHECK_ROWS))
        except (ValueError, OSError, KeyError) as e:
            raise UserError("err.ft.unreadable", name=name, error=UserError.of(e)) from None
        good = rows if pretrain or prefer or grpo else [c for c in rows if usable(c)]
        if not good:
            raise UserError("err.ft.no_rows", name=name, n=len(rows))
        convs += good
    count = None if pretrain or prefer else token_counter(model_path)
    if grpo:
        warnings += rewards.check_rows(spec, convs, count)
        count = None
    if count is not None:
        check_tools(convs, count.template, spec.base_model)
        sample = convs[:200]
        lengths = [count(c) for c in sample]
        max_length = spec.max_length
        fit = sum(1 for p, _ in lengths if p < max_length)
        if not fit:
            shortest = min(p for p, _ in lengths)
            raise UserError("err.ft.max_length", max_length=max_length, shortest=shortest)
        if fit < len(lengths):
            warnings.append(f"{len(lengths) - fit} of {len(lengths)} sampled rows have prompts longer than "
                            f"max_length {max_length}: they will be skipped")
        longer = sum(1 for _, n in lengths if n > max_length)
        if longer:
            warnings.append(f"{longer} of {len(lengths)} sampled rows are longer than max_length and will be cut")
    est = estimate(spec, info, gpu=on_gpu)
    fits(spec, est, on_gpu, gpu_list, warnings)
    rows = min(len(convs), spec.max_samples or len(convs))
    mean = sum(n for _, n in lengths) / len(lengths) if count is not None else spec.max_length
    if grpo:
        mean = prompts.MEAN_PROMPT_TOKENS + spec.max_completion_length
    duration = estimate_duration(spec.model_dump(), rows, mean, info["params"], on_gpu, home)
    check_names(spec, home)
    return {"model_path": str(model_path), "on_gpu": on_gpu, "estimate": est, "duration": duration, "warnings": warnings,
            "info": {k: info[k] for k in ("architectures", "params", "hidden", "layers", "vocab")},
            "rows_checked": len(convs)}


def fits(spec, est: dict, on_gpu: bool, gpu_list, warnings: list) -> None:
    if on_gpu:
        largest = max(g.total_gb for g in gpu_list) - placement.GPU_HEADROOM_GB
        if (spec.gpu_mem_gb or est["total_gb"]) > largest:
            warnings.append(f"estimated {est['total_gb']:.1f} GB does not fit the largest GPU here ({largest:.1f} GB "
                            "usable): use QLoRA, a smaller batch_size or max_length, or gradient checkpointing")


def check_names(spec, home: Path) -> None:
    """The adapter / model name is free (unless resuming) and a resumed job matches."""
    if spec.name:
        kind = "model" if spec.method == "full" else "adapter"
        existing = open_store(home).get(kind, spec.name)
        if existing and not (spec.resume or spec.resume_from):
            raise UserError("err.ft.exists", kind=kind, name=spec.name)
    if spec.resume_from:
        check_resume(spec.model_dump(mode="json"), spec.resume_from, home)


CHECK_IMAGES = 32            # rows whose images are opened per submit (all of them are resolved)


def check_image_text(spec, home: Path, model_path: Path, info: dict, on_gpu: bool, gpu_list, paths: list[Path],
                     warnings: list) -> dict:
    """check() for ``modality: image_text``: rows with images (each resolved inside its dataset's folder, the
    first CHECK_IMAGES rows' opened), sample images, and the memory estimate with the image tokens counted."""
    rows = []
    for name, p in zip(spec.datasets, paths):
        if not image_text.has_images(p):
            raise UserError("err.it.no_images", name=name)
        try:
            got = image_text.load_rows(p, CHECK_ROWS, check=False)
            for _, files in got[:CHECK_IMAGES]:
                for f in files:
                    image_text.check_image(f, f.name)
        except (ValueError, OSError) as e:
            raise UserError("err.ft.unreadable", name=name, error=UserError.of(e)) from None
        good = [r for r in got if usable(r[0])]
        if not good:
            raise UserError("err.ft.no_rows", name=name, n=len(got))
        rows += good
    roots = image_text.root_of(paths[0])
    for item in spec.sample_images:
        image_text.check_image(image_text.resolve_image(roots, item), item)
    per_image = image_text.image_tokens(model_path)
    count = token_counter(model_path)
    lengths = [(count(c)[1] if count else 0) + len(files) * (per_image - 1) for c, files in rows[:200]]
    image_only = min(len(files) for _, files in rows[:200]) * per_image
    if image_only >= spec.max_length:
        raise UserError("err.it.max_length", max_length=spec.max_length, tokens=image_only, per_image=per_image)
    longer = sum(1 for n in lengths if n > spec.max_length)
    if longer:
        warnings.append(f"{longer} of {len(lengths)} sampled rows are longer than max_length {spec.max_length} with "
                        f"their image tokens ({per_image} an image): they are cut after their last image, or skipped")
    longest = min(spec.max_length, max(lengths))
    est = estimate(spec, info, gpu=on_gpu, row_tokens=longest)
    est["image_tokens_per_image"], est["row_tokens"] = per_image, longest
    fits(spec, est, on_gpu, gpu_list, warnings)
    n = min(len(rows), spec.max_samples or len(rows))
    mean = sum(lengths) / len(lengths)
    duration = estimate_duration(spec.model_dump(), n, mean, info["params"], on_gpu, home)
    check_names(spec, home)
    return {"model_path": str(model_path), "on_gpu": on_gpu, "estimate": est, "duration": duration, "warnings": warnings,
            "info": {k: info[k] for k in ("architectures", "params", "hidden", "layers", "vocab")},
            "rows_checked": len(rows), "images_checked": sum(len(f) for _, f in rows)}


# -- the default preset and the duration estimate ------------------------------------------------
def default_preset(gpu_list=None, objective: str = "sft", image_text: bool = False) -> str:
    """The preset a new form starts on: XTuner's (GRPO's GPU one; image-text: InternVL2-2B's) with a GPU, the CPU
    demo without one."""
    gpu = bool(placement.gpus() if gpu_list is None else gpu_list)
    if image_text:
        return "internvl2_2b" if gpu else "vlm_cpu_demo"
    if objective == "grpo":
        return "grpo_gpu" if gpu else "grpo_cpu_demo"
    return "xtuner" if gpu else "cpu_demo"


def train_tokens(spec: dict, rows: int, mean_tokens: float) -> int:
    """Tokens a run will train on: the rows (≤ max_length each) over its epochs, or its max_steps."""
    max_length = int(spec.get("max_length", 2048))
    per_row = min(mean_tokens, max_length)
    per_epoch = rows * per_row
    bins = math.ceil(per_epoch / max_length) if spec.get("packing", True) else rows
    steps_per_epoch = max(1, math.ceil(bins / (int(spec.get("batch_size", 1)) * int(spec.get("grad_accum", 16)))))
    steps = int(spec.get("max_steps") or 0) or math.ceil(float(spec.get("epochs", 3.0)) * steps_per_epoch)
    return int(per_epoch / steps_per_epoch * steps)


def measured_throughput(base_model: str, on_gpu: bool, home: Path) -> float | None:
    """Median tokens/s of this machine's latest finished fine-tunes of ``base_model`` on the same kind of
    device (from their result.json); None when there is none."""
    rates = []
    for job in open_store(home).jobs(states=[JobState.SUCCEEDED], kind="finetune", limit=10):
        rate = (logs.result(job.id, home) or {}).get("tokens_per_s")
        if rate and job.spec.get("base_model") == base_model and bool((job.given or {}).get("gpus")) == on_gpu:
            rates.append(float(rate))
    return sorted(rates)[len(rates) // 2] if rates else None


def estimate_duration(spec: dict, rows: int, mean_tokens: float, params: int, on_gpu: bool, home: Path) -> dict:
    """Seconds a run should take here: its tokens at this machine's measured throughput (or the calibration)."""
    where = "gpu" if on_gpu else "cpu"
    tokens = (prompts.grpo_tokens(spec, rows, mean_tokens) if spec.get("objective") == "grpo"
              else train_tokens(spec, rows, mean_tokens))
    measured = measured_throughput(spec["base_model"], on_gpu, home)
    rate = measured or CALIBRATION_TOKEN_PARAMS_S[where] / max(params, 1)
    return {"seconds": round(tokens / rate + STARTUP_S[where]), "tokens": tokens, "tokens_per_s": round(rate, 1),
            "measured": measured is not None}


def training_key(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in RESUME_FREE}


def spec_differences(a: dict, b: dict) -> list[str]:
    ka, kb = training_key(a), training_key(b)
    return sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))


def checkpoints(job_id: int, home: Path) -> list[Path]:
    """A fine-tune job's saved checkpoints, oldest first."""
    d = job_dir(job_id, home) / "checkpoints"
    found = [p for p in d.glob("step-*") if (p / "state.json").exists()] if d.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def check_resume(spec: dict, job_id: int, home: Path) -> Path:
    old = open_store(home).job(job_id)
    if old is None or old.kind != "finetune":
        raise UserError("err.ft.resume_none", job=job_id)
    ckpts = checkpoints(job_id, home)
    if not ckpts:
        raise UserError("err.ft.resume_no_ckpt", job=job_id)
    diff = spec_differences(spec, old.spec)
    if diff:
        raise UserError("err.ft.resume_differs", job=job_id, fields=", ".join(diff))
    return ckpts[-1]


def find_resumable(spec: dict, home: Path, exclude: int | None, owner: str) -> int | None:
    """For ``resume: true``: the newest of ``owner``'s fine-tune jobs with the same spec that left a checkpoint."""
    for job in open_store(home).jobs(kind="finetune", owner=owner, limit=200):
        if job.id != exclude and not spec_differences(spec, job.spec) and checkpoints(job.id, home):
            return job.id
    return None


# -- the spec as YAML and as a command ---------------------------------------------------------
def to_yaml(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def cli_command(spec_file: str = "spec.yaml") -> str:
    return f"python -m backend submit finetune {spec_file}"


METRICS = ["loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"]


def compare(job_ids: list[int], metric: str = "loss", *, home: Path) -> dict[str, dict[int, float]]:
    """One series per run, ``{"job 7": {step: value}}``, to draw several runs on one chart (from the parse
    of each run's events that live views share)."""
    return {f"job {job_id}": dict(events.events(job_id, home=home).series.get(metric, [])) for job_id in job_ids}


def adapters(home: Path, by: users.Actor) -> list[Entry]:
    """Registered adapters ``by`` may use, newest first."""
    return ownership.items("adapter", by, home)


def resumable(job: Job, home: Path) -> bool:
    return job.kind == "finetune" and job.state.unsuccessful and bool(checkpoints(job.id, home))
