"""finetune: LoRA / QLoRA / full fine-tuning of a chat model on transformers + peft.

The model's own chat template renders each conversation; only assistant replies (or messages
flagged ``loss: true``) are trained. Rows are packed into ``max_length`` bins whose position ids
restart at every row, and no attention mask is passed: packed rows never attend to each other.
On SDPA models the job's own attention (``packed_sdpa``) runs each packed row causally on its own
and a micro-batch is flattened into unpadded sequences (pieces of ≤ FLAT_TOKENS on CPU); other
models get transformers' block-diagonal mask built from the same position ids. A step =
``grad_accum`` micro-batches of ``batch_size`` bins; the loss is the mean over the step's trained tokens.

SIGTERM (cancel) saves a checkpoint of the last finished step and exits; ``resume_from: <job id>``
(or ``resume: true``: the newest job with the same spec) continues from it, with the same data order.
"""
from __future__ import annotations

import inspect
import json
import math
import random
import resource
import shutil
import signal
import time
import warnings
from pathlib import Path


from backend.pipeline import finetune as ft, preference
from backend.workspace import formats, models, remote_code
from backend.core.errors import BAD_INPUT, DISK_FULL, classify_exception, is_oom, MISSING_ENGINE, OUT_OF_MEMORY
from backend.kinds.finetune import Spec
from backend.core.store import open_store
from jobs import finetune_image, grpo as trl_grpo, preference as trl_preference, tracking
from jobs.common import Cancelled, Job, JobError, run



# -- data ----------------------------------------------------------------------------------------
def tokenize(tok, conv: list[dict], max_length: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels of one conversation (-100 where nothing is trained), cut to max_length.
    The model's chat template renders it, with the row's tools (``conv.tools``); a row of only assistant
    text (the pre-training form of XTuner and ms-swift) is plain text, every token trained."""
    if all(m["role"] == "assistant" for m in conv):
        return (text_samples(tok, ["\n".join(m["content"] for m in conv)], max_length) or [None])[0]
    msgs = formats.for_template(conv)
    tools = getattr(conv, "tools", None)
    render = lambda ms, gen=False: tok.apply_chat_template(ms, tools=tools, tokenize=False,  # noqa: E731
                                                           add_generation_prompt=gen)
    full = render(msgs)
    spans = []
    for k, m in enumerate(conv):
        if not formats.trained(m):
            continue
        upto = render(msgs[:k + 1])
        # the first message has no "before": its span starts at its text, not at a default system prompt
        before = render(msgs[:k], gen=m["role"] == "assistant") if k else upto[:max(0, upto.find(m["content"]))]
        if not full.startswith(upto) or not upto.startswith(before):
            upto_i = full.find(m["content"]) if m["content"] else -1
            if upto_i >= 0:
                spans.append((upto_i, upto_i + len(m["content"])))     # template not prefix-stable: the text only
        else:
            spans.append((len(before), len(upto)))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"][:max_length], []
    for i, (a, b) in enumerate(enc["offset_mapping"][:max_length]):
        trained = i > 0 and any(s <= a < e for s, e in spans)
        labels.append(ids[i] if trained else -100)
    return (ids, labels) if any(x != -100 for x in labels) else None


def text_samples(tok, texts: list[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Continued pre-training: each document's tokens (+ EOS), cut into pieces of ≤ max_length, every
    token trained; ``pack`` puts several in a row (each attending only to itself)."""
    out = []
    for text in texts:
        ids = tok(text)["input_ids"]                     # the tokenizer's own BOS, if it adds one
        if tok.eos_token_id is not None and ids[-1:] != [tok.eos_token_id]:
            ids.append(tok.eos_token_id)
        out += [(ids[i:i + max_length], ids[i:i + max_length]) for i in range(0, len(ids), max_length)
                if len(ids[i:i + max_length]) > 1]
    return out


def pack(samples: list, max_length: int, packing: bool) -> list[list[int]]:
    """Rows of sample indices: next-fit into max_length bins when packing, else one sample a row."""
    if not packing:
        return [[i] for i in range(len(samples))]
    rows, cur, used = [], [], 0
    for i, (ids, _) in enumerate(samples):
        if cur and used + len(ids) > max_length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += len(ids)
    return rows + ([cur] if cur else [])


def flatten(samples, rows: list[list[int]], limit: float) -> list[list[list[int]]]:
    """A micro-batch's samples as one unpadded row, cut at sample boundaries into pieces of at most
    ``limit`` tokens (each piece a one-row batch for collate)."""
    pieces, used = [[]], 0
    for i in (i for row in rows for i in row):
        if pieces[-1] and used + len(samples[i][0]) > limit:
            pieces.append([])
            used = 0
        pieces[-1].append(i)
        used += len(samples[i][0])
    return [[p] for p in pieces]


def collate(torch, samples, rows: list[list[int]], pad_id: int):
    """input_ids, labels, position_ids (restarting at each packed sample), real-token count."""
    seqs = []
    for row in rows:
        ids, labels, pos = [], [], []
        for i in row:
            ids += samples[i][0]
            labels += samples[i][1]
            pos += range(len(samples[i][0]))
        seqs.append((ids, labels, pos))
    width = max(len(s[0]) for s in seqs)
    pad = lambda x, v: x + [v] * (width - len(x))   # noqa: E731
    ids = torch.tensor([pad(s[0], pad_id) for s in seqs])
    labels = torch.tensor([pad(s[1], -100) for s in seqs])
    # padding continues the last row's positions: an unpacked batch stays plain causal (the fast path)
    pos = torch.tensor([s[2] + list(range(s[2][-1] + 1, s[2][-1] + 1 + width - len(s[2]))) for s in seqs])
    return ids, labels, pos, sum(len(s[0]) for s in seqs)


# -- packed attention ----------------------------------------------------------------------------
PACKED_ATTENTION = "packed_sdpa"
FLAT_TOKENS = 384       # tokens per forward pass of flattened packed rows on CPU: speed vs peak RSS (docs/finetune.md, Benchmark)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None, **kwargs):
    """SDPA run causally on each packed sample alone: a sample starts wherever ``position_ids`` stop counting
    up by one (transformers' own rule for its block-diagonal mask), so the result is that mask's without
    building it, and the cost follows the samples' lengths instead of the row's. With a padding mask, a
    cache or no position ids it is plain SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    n = query.shape[2]
    if attention_mask is not None or position_ids is None or n == 1 or key.shape[2] != n:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)   # CPU SDPA is slower with enable_gqa
    pos = position_ids.expand(query.shape[0], -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    rows = []
    for q, k, v, row in zip(query.split(1), key.split(1), value.split(1), starts.tolist()):
        cuts = [i for i, s in enumerate(row) if s] + [n]
        sizes = [j - i for i, j in zip(cuts, cuts[1:])]     # split, not slices: its backward is one cat
        rows.append(torch.cat([torch.nn.functional.scaled_dot_product_attention(
            *qkv, dropout_p=dropout, scale=scaling, is_causal=True)
            for qkv in zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2))], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def packed_mask(*args, attention_mask=None, **kwargs):
    """No 4D mask when no padding mask is given (packed_sdpa works from the position ids), else SDPA's."""
    from transformers.masking_utils import sdpa_mask
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def use_packed_attention(model) -> bool:
    """Switch an SDPA model (full attention only: no sliding window) to packed_sdpa; False if it can't be."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    config = model.config
    if (config._attn_implementation != "sdpa" or getattr(config, "sliding_window", None)
            or any(t != "full_attention" for t in getattr(config, "layer_types", None) or [])
            or not model._can_set_attn_implementation()):
        return False
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, packed_mask)
    model.set_attn_implementation(PACKED_ATTENTION)
    return config._attn_implementation == PACKED_ATTENTION


# -- the run -------------------------------------------------------------------------------------
class StopFlag:
    """SIGTERM during forward/backward stops at once (the weights are still those of the last step);
    during an optimizer step or a save, it waits for the end of it."""

    def __init__(self):
        self.requested = False
        self.critical = False

    def __call__(self, signum, frame):
        self.requested = True
        if not self.critical:
            raise Cancelled()

    def __enter__(self):
        self.critical = True

    def __exit__(self, *exc):
        self.critical = False
        if self.requested and exc[0] is None:
            raise Cancelled()


def lr_lambda(spec: Spec, total: int):
    warmup = math.ceil(spec.warmup_ratio * total)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if spec.scheduler == "cosine" else 1 - progress
    return f


def oom_error(spec: Spec, e: BaseException) -> JobError:
    """Out of memory, with the spec changes that lower it. QLoRA is offered for GPU memory only: it
    needs CUDA, and torch's CPU allocator failing means host memory ran out."""
    on_gpu = type(e).__name__ == "OutOfMemoryError"
    tips = []
    if spec.batch_size > 1:
        tips.append(f"batch_size {spec.batch_size} → 1 with grad_accum {spec.grad_accum * spec.batch_size}")
    if spec.max_length > 256:
        tips.append(f"max_length {spec.max_length} → {spec.max_length // 2}")
    if not spec.gradient_checkpointing:
        tips.append("gradient_checkpointing: true")
    if on_gpu and spec.method != "qlora":
        tips.append("method: qlora (4-bit base weights)")
    where = "GPU" if on_gpu else "host"
    return JobError(f"out of {where} memory: {type(e).__name__}: {str(e)[:300]}", OUT_OF_MEMORY,
                    "; ".join(tips) or "use a smaller model")


def main(spec: Spec, job: Job) -> dict:
    try:
        with tracking.trackers(job, spec.trackers, spec.model_dump(mode="json")):
            return (ImageRun if spec.modality == "image_text" else Run)(spec, job).train()
    except (RuntimeError, MemoryError) as e:          # torch.OutOfMemoryError is a RuntimeError
        if is_oom(e):
            raise oom_error(spec, e) from None
        raise


class Run:
    def __init__(self, spec: Spec, job: Job):
        self.spec, self.job = spec, job
        self.ckpt_dir = job.dir / "checkpoints"
        self.job_id = job.id or 0

    def log(self, text: str) -> None:
        self.job.message(text)

    # -- setup ------------------------------------------------------------------------------------
    def prepare(self) -> tuple:
        """The start of every load (text or image-text): quiet library logs, the seeds, the base model's folder and
        whether its remote code may run (the opt-in, bound to that code's hash)."""
        import torch
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6", category=FutureWarning)
        torch.manual_seed(self.spec.seed)
        random.seed(self.spec.seed)
        try:
            model_path, _ = ft.resolve_model(self.spec.base_model, self.job.home)
        except ValueError as e:
            raise JobError(str(e), BAD_INPUT) from None
        self.model_path = model_path
        return model_path, remote_code.trust(model_path, self.job.home)

    def load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        spec = self.spec
        model_path, remote = self.prepare()
        on_gpu = torch.cuda.is_available() and spec.device != "cpu"
        problem = ft.device_problem(spec.method, spec.device, torch.cuda.is_available())
        if problem:
            raise JobError(problem, BAD_INPUT)
        self.device = torch.device("cuda" if on_gpu else "cpu")
        if spec.dtype == "auto":
            self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu else torch.float32
        else:
            self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.dtype]
        self.tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
        if self.tok.chat_template is None and spec.objective in ("sft", "grpo"):
            raise JobError(f"{spec.base_model} has no chat template: fine-tune an instruct/chat model "
                           "(or add a chat_template to its tokenizer_config.json)", BAD_INPUT)
        kwargs = {"trust_remote_code": remote, "dtype": self.dtype if spec.method != "full" else torch.float32}
        if spec.method == "qlora":
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise JobError("QLoRA needs bitsandbytes, which is not installed", MISSING_ENGINE,
                               ".venv/bin/pip install -r requirements.txt") from None
            from transformers import BitsAndBytesConfig
            kwargs.update(device_map={"": 0 if on_gpu else "cpu"}, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=self.dtype))
        self.log(f"loading {spec.base_model} ({spec.method}, {str(self.dtype).replace('torch.', '')} on {self.device})")
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        if spec.method != "qlora":
            model.to(self.device)
        model.config.use_cache = False
        # packed bins (not for TRL's preference trainers, which pad their own batches): unpadded sequences,
        # each sample attending only to itself; on CPU in pieces of
        # ≤ FLAT_TOKENS (a larger pass runs faster but holds more activations; the gradients add up the same);
        # pre-training rows are full max_length blocks: one block a piece halves the passes (docs/finetune.md)
        self.flatten = spec.packing and spec.objective in ("sft", "pretrain") and use_packed_attention(model)
        cpu_piece = max(FLAT_TOKENS, spec.max_length) if spec.objective == "pretrain" else FLAT_TOKENS
        self.piece_tokens = cpu_piece if self.device.type == "cpu" else math.inf
        if spec.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):       # transformers >= 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method == "qlora":
            from peft import prepare_model_for_kbit_training
            n4 = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
            self.log(f"4-bit NF4 base (double quantisation): {n4} Linear4bit layers")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method != "full":
            from peft import LoraConfig, get_peft_model
            targets = "all-linear" if spec.target_modules == ["all-linear"] else spec.target_modules
            config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                                target_modules=targets, task_type="CAUSAL_LM")
            try:
                model = get_peft_model(model, config)
            except (ValueError, TypeError) as e:
                raise JobError(f"peft can't wrap {spec.base_model}: {e}", BAD_INPUT,
                               "check target_modules against the model's layer names") from None
        model.train()
        self.model = model
        base = model.get_base_model() if spec.method != "full" else model
        self.keep_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.params = [p for p in model.parameters() if p.requires_grad]
        n_train, n_all = sum(p.numel() for p in self.params), sum(p.numel() for p in model.parameters())
        self.log(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")

    def data(self):
        spec = self.spec
        try:
            paths = [ft.resolve_dataset(d, self.job.home) for d in spec.datasets]
            if spec.objective == "pretrain":
                convs = ft.load_texts(paths, spec.max_samples)
            else:
                convs = [c for c in ft.load_conversations(paths, spec.max_samples) if ft.usable(c)]
                ft.check_tools(convs, self.tok.chat_template, spec.base_model)
        except ValueError as e:
            raise JobError(str(e), BAD_INPUT) from None
        random.Random(spec.seed).shuffle(convs)
        n_eval = int(len(convs) * spec.eval_ratio)
        if spec.objective == "pretrain":
            tokenized = text_samples(self.tok, convs, spec.max_length)
            n_eval = int(len(tokenized) * spec.eval_ratio)
        else:
            tokenized = [tokenize(self.tok, c, spec.max_length) for c in convs]
        train = [s for s in tokenized[n_eval:] if s]
        self.eval_samples = [s for s in tokenized[:n_eval] if s]
        dropped = len(tokenized) - len(train) - len(self.eval_samples)
        if not train:
            raise JobError(f"no row has a trained token within max_length {spec.max_length}", BAD_INPUT,
                           "raise max_length or check the data's assistant replies")
        self.samples = train
        self.rows = pack(train, spec.max_length, spec.packing)
        self.eval_rows = pack(self.eval_samples, spec.max_length, spec.packing)
        self.micro_per_epoch = math.ceil(len(self.rows) / spec.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / spec.grad_accum)
        self.total = spec.max_steps or math.ceil(spec.epochs * self.steps_per_epoch)
        tokens = sum(len(s[0]) for s in train)
        self.log(f"data: {len(train)} rows ({tokens} tokens) in {len(self.rows)} "
                 f"{'packed ' if spec.packing else ''}rows of ≤{spec.max_length}; {len(self.eval_samples)} eval rows; "
                 f"{dropped} dropped; {self.steps_per_epoch} steps/epoch, {self.total} steps")

    def micro_batches(self, step: int) -> list[list[list[int]]]:
        """The micro-batches of a (0-based) step: fixed by the seed, so a resumed run sees the same data."""
        spec, epoch, k = self.spec, step // self.steps_per_epoch, step % self.steps_per_epoch
        order = list(range(len(self.rows)))
        random.Random(spec.seed * 1000 + epoch).shuffle(order)
        out = []
        for m in range(k * spec.grad_accum, min((k + 1) * spec.grad_accum, self.micro_per_epoch)):
            out.append([self.rows[i] for i in order[m * spec.batch_size:(m + 1) * spec.batch_size]])
        return out

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        import torch
        tmp, final = self.ckpt_dir / f".tmp-step-{step}", self.ckpt_dir / f"step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            self.save_weights(tmp)
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state()}, tmp / "trainer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "spec": self.spec.model_dump(mode="json"),
                                                        "history": self.history[-2000:]}))
        except (OSError, RuntimeError) as e:        # torch reports a full disk as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            if classify_exception(e) == DISK_FULL or shutil.disk_usage(self.job.dir).free < (1 << 20):
                raise JobError(f"the disk filled up while saving the checkpoint of step {step}", DISK_FULL,
                               "free some space, then retry: resume: true continues from the last complete "
                               "checkpoint") from None
            raise
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        for old in ft.checkpoints(self.job_id, self.job.home)[:-self.spec.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        self.saved_step = step
        self.log(f"checkpoint saved: step {step}")
        return final

    def save_weights(self, folder: Path) -> None:
        if self.spec.method == "full":
            from safetensors.torch import save_model
            save_model(self.model, str(folder / "model.safetensors"))
        else:
            self.model.save_pretrained(folder)

    def load_checkpoint(self, path: Path) -> int:
        import torch
        state = json.loads((path / "state.json").read_text())
        diff = ft.spec_differences(self.spec.model_dump(mode="json"), state["spec"])
        if diff:
            raise JobError(f"the checkpoint {path} was made with a different spec ({', '.join(diff)})", BAD_INPUT,
                           "resume with the same spec")
        if self.spec.method == "full":
            from safetensors.torch import load_model
            load_model(self.model, str(path / "model.safetensors"))
        else:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(self.model, load_file(str(path / "adapter_model.safetensors")))
        t = torch.load(path / "trainer.pt", weights_only=True)     # tensors and plain data only: no pickled code
        self.opt.load_state_dict(t["optimizer"])
        self.sched.load_state_dict(t["scheduler"])
        self.scaler.load_state_dict(t["scaler"])
        torch.set_rng_state(t["rng"])
        self.history = state.get("history", [])
        self.log(f"resumed from {path} at step {state['step']}")
        return int(state["step"])

    def resume_point(self) -> Path | None:
        """The checkpoint to continue from: only ever one of this job owner's own fine-tune jobs."""
        spec = self.spec
        store = open_store(self.job.home)
        owner = self.job.owner
        job_id = spec.resume_from
        if job_id is not None and getattr(store.job(job_id), "owner", None) != owner:
            raise JobError(f"resume_from: job {job_id} is not one of your fine-tune jobs", BAD_INPUT,
                           "resume from one of your own jobs (Jobs page), or leave resume_from empty")
        if job_id is None and spec.resume:
            job_id = ft.find_resumable(spec.model_dump(mode="json"), self.job.home, exclude=self.job_id, owner=owner)
            if job_id is None:
                self.log("resume: no earlier run with this spec left a checkpoint; starting from step 0")
                return None
        if job_id is None:
            return None
        ckpts = ft.checkpoints(job_id, self.job.home)
        if not ckpts:
            raise JobError(f"job {job_id} left no checkpoint to resume from", BAD_INPUT)
        return ckpts[-1]

    # -- training -----------------------------------------------------------------------------------
    def forward_loss(self, torch, samples, rows, n_items: int):
        """Summed token loss of one batch of rows divided by the step's trained-token count."""
        ids, labels, pos, n_tokens = collate(torch, samples, rows, self.pad_id)
        ids, labels, pos = ids.to(self.device), labels.to(self.device), pos.to(self.device)
        targets = labels[:, 1:]
        kwargs = {}
        if self.keep_logits:   # logits only where a token is trained: prompts skip the output head
            keep = (targets != -100).any(0).nonzero().flatten()
            kwargs["logits_to_keep"], targets = keep, targets[:, keep]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            logits = self.model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits
        if not self.keep_logits:
            logits = logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                 ignore_index=-100, reduction="sum") / max(1, n_items)
        return loss, n_tokens

    def pieces(self, samples, rows: list[list[int]]) -> list[list[list[int]]]:
        """The forward passes of one micro-batch: its rows, or flattened (see load)."""
        return flatten(samples, rows, self.piece_tokens) if self.flatten else [rows]

    def evaluate(self, torch) -> float | None:
        if not self.eval_rows:
            return None
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.eval_rows), self.spec.batch_size):
                for rows in self.pieces(self.eval_samples, self.eval_rows[i:i + self.spec.batch_size]):
                    total += self.forward_loss(torch, self.eval_samples, rows, 1)[0].item()
                    n += sum(sum(1 for x in self.eval_samples[s][1][1:] if x != -100) for r in rows for s in r)
        self.model.train()
        return total / max(1, n)

    def answers(self, torch) -> list[str]:
        if not self.spec.sample_prompts:
            return []
        self.model.eval()
        out = []
        with torch.no_grad():
            for prompt in self.spec.sample_prompts:
                if self.spec.objective == "pretrain":           # a continuation of the text, no template
                    ids = self.tok(prompt, return_tensors="pt")["input_ids"].to(self.device)
                else:
                    ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                       return_tensors="pt", return_dict=True)["input_ids"].to(self.device)
                gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                          do_sample=False, pad_token_id=self.pad_id, use_cache=True)
                out.append(self.tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        self.model.train()
        return out

    def train(self) -> dict:
        import torch
        spec, job = self.spec, self.job
        job.progress(0, None, "steps", "loading the model", force=True)
        self.load()
        if spec.objective in preference.OBJECTIVES:          # DPO / ORPO / KTO on TRL
            return trl_preference.train(self)
        if spec.objective == "grpo":                          # GRPO on TRL, rewards from backend/pipeline/rewards.py
            return trl_grpo.train(self)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        self.data()
        self.opt = torch.optim.AdamW(self.params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.999))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(spec, self.total))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.history, self.saved_step = [], 0
        before = self.answers(torch)
        for p, a in zip(spec.sample_prompts, before):
            self.log(f"before: {p!r} → {a!r}")
        start = 0
        point = self.resume_point()
        if point is not None:
            start = self.saved_step = self.load_checkpoint(point)
        stop = StopFlag()
        signal.signal(signal.SIGTERM, stop)
        step = start
        t_run, tokens_run = time.monotonic(), 0
        try:
            while step < self.total:
                t0 = time.monotonic()
                batches = self.micro_batches(step)
                n_items = sum(sum(1 for x in self.samples[s][1][1:] if x != -100)
                              for mb in batches for r in mb for s in r)
                loss_sum, n_tokens = 0.0, 0
                for rows in (rows for mb in batches for rows in self.pieces(self.samples, mb)):
                    loss, nt = self.forward_loss(torch, self.samples, rows, n_items)
                    self.scaler.scale(loss).backward()
                    loss_sum, n_tokens = loss_sum + loss.item(), n_tokens + nt
                # the optimizer step and its metric point: a stop waits for both, so a checkpoint
                # saved on cancel always has its point on the chart
                with stop:
                    self.scaler.unscale_(self.opt)
                    norm = torch.nn.utils.clip_grad_norm_(self.params, spec.max_grad_norm or float("inf"))
                    lr = self.sched.get_last_lr()[0]
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    self.sched.step()
                    self.opt.zero_grad(set_to_none=True)
                    step += 1
                    dt = time.monotonic() - t0
                    tokens_run += n_tokens
                    point = {"step": step, "loss": round(loss_sum, 5), "lr": lr, "grad_norm": round(float(norm), 5),
                             "tokens_per_s": round(n_tokens / dt, 1)}
                    self.history.append(point)
                    job.metric(**point)
                    job.progress(step, self.total, "steps", f"loss {loss_sum:.4f}", force=step == self.total)
                if spec.eval_steps and step % spec.eval_steps == 0 and step < self.total:
                    with stop:
                        self.eval_point(torch, step)
                if step % spec.save_steps == 0 and step < self.total:
                    with stop:
                        self.save_checkpoint(step)
        except Cancelled:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)    # the worker's SIGKILL stays the backstop
            self.opt.zero_grad(set_to_none=True)
            if step > self.saved_step:
                self.save_checkpoint(step)
            self.log(f"cancelled at step {step}: resume with resume_from: {self.job_id}")
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        eval_loss = self.eval_point(torch, step)
        after = self.answers(torch)
        for p, a in zip(spec.sample_prompts, after):
            self.log(f"after: {p!r} → {a!r}")
        elapsed = time.monotonic() - t_run
        losses = [h["loss"] for h in self.history]
        result = {"steps": step, "resumed_from_step": start or None, "first_loss": losses[0] if losses else None,
                  "final_loss": losses[-1] if losses else None, "eval_loss": eval_loss,
                  "tokens_per_s": round(tokens_run / elapsed, 1) if elapsed else None, "train_tokens": tokens_run,
                  "answers_before": before, "answers_after": after,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device.type == "cuda" else None,
                  "grad_scale": self.scaler.get_scale() if self.scaler.is_enabled() else None}   # fp16 on CUDA
        result.update(self.publish(result))
        return result

    def eval_point(self, torch, step: int) -> float | None:
        eval_loss = self.evaluate(torch)
        if eval_loss is not None:
            self.job.metric(step, eval_loss=round(eval_loss, 5))
            self.log(f"step {step}: eval_loss {eval_loss:.4f}")
        return eval_loss

    def publish(self, result: dict) -> dict:
        """Save the adapter (or the full model) into the workspace and register it with its lineage."""
        spec = self.spec
        full = spec.method == "full"
        name = spec.name or f"{spec.base_model}-{spec.method}-job{self.job_id}"
        folder = self.job.home / ("models" if full else "adapters") / name
        kind = "model" if full else "adapter"
        self.job.check_name(kind, name)
        tmp = folder.with_name(f".tmp-{name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp)
        self.tok.save_pretrained(tmp)
        metrics = {k: result[k] for k in ("steps", "final_loss", "eval_loss", "tokens_per_s")}
        meta = {"base_model": spec.base_model, "base_path": str(self.model_path), "datasets": spec.datasets,
                "method": spec.method, "modality": spec.modality, "spec": spec.model_dump(mode="json"), "metrics": metrics, "job": self.job_id}
        (tmp / "workbench.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        if full:
            lineage = {"base_model": spec.base_model, "datasets": spec.datasets, "finetune_job": self.job_id}
            models.register(name, folder, "finetune", job_id=self.job.id, owner=self.job.owner, home=self.job.home,
                            lineage=lineage, **{k: v for k, v in meta.items() if k != "job"})
        else:
            self.job.register(kind, name, folder, meta)
        self.log(f"{kind} {name!r} saved to {folder}")
        return {kind: name, "path": str(folder)}


class ImageRun(finetune_image.ImageText, Run):
    """The run on an image-text model (``modality: image_text``): jobs/finetune_image.py."""


if __name__ == "__main__":
    run(main, Spec)
