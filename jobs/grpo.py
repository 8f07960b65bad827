"""GRPO inside the finetune job (objective grpo) on TRL's GRPOTrainer: each prompt is answered
``num_generations`` times, the rewards (backend/pipeline/rewards.py; a student's own code only in the sandbox)
score each answer, and the model moves towards the answers that scored above their group's mean. The
model (LoRA, QLoRA or full) is loaded as for SFT; with beta > 0 the KL is measured against the base
(the model without the adapter under LoRA).

Every logged step becomes a metric event (reward and its spread, each reward's mean and spread, KL,
completion length, loss) and a ``completions`` event: the step's sampled answers with their rewards.
"""
from __future__ import annotations

import resource
import time

from backend.pipeline import finetune as ft, rewards as rw
from backend.core.errors import BAD_INPUT, UserError
from jobs.common import JobError

SHOWN_COMPLETIONS = 8            # sampled answers written per logged step
SHOWN_CHARS = 600                # of each prompt and answer


def text(x) -> str:
    """A prompt or completion as text: TRL passes messages for chat data."""
    if isinstance(x, list):
        return "\n".join(str(m.get("content", "")) for m in x if isinstance(m, dict))
    return str(x)


def reward_funcs(spec, folder, columns: list[str]) -> list:
    """TRL reward functions (named for the charts) around the spec's rewards: completions as text, the
    dataset's columns as keyword arguments; a failing reward stops the job with its sentence."""
    out = []
    for name, f in rw.build(spec.rewards, folder):
        def call(prompts, completions, f=f, **kwargs):
            return f([text(c) for c in completions], **{k: kwargs[k] for k in columns if k in kwargs})
        call.__name__ = name
        out.append(call)
    return out


def config(spec, run_dir, on_cpu: bool, dtype: str, **extra):
    """GRPOConfig for ``spec`` (also bench/finetune.py's, so the job and the direct call match)."""
    from trl import GRPOConfig
    return GRPOConfig(
        output_dir=str(run_dir), per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1, lr_scheduler_type=spec.scheduler, warmup_steps=min(spec.warmup_ratio, 0.999),
        weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm or 1e9, seed=spec.seed, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=on_cpu, bf16=dtype == "torch.bfloat16", fp16=dtype == "torch.float16",
        beta=spec.beta, num_generations=spec.num_generations, max_completion_length=spec.max_completion_length,
        temperature=spec.temperature, reward_weights=[r.weight for r in spec.rewards], disable_tqdm=True,
        gradient_checkpointing=spec.gradient_checkpointing, remove_unused_columns=False, log_completions=False,
        **extra)


def metric_point(logs: dict, names: list[str]) -> dict:
    """TRL's log line → the metric names the page charts."""
    keys = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "reward": "reward",
            "reward_std": "reward_std", "kl": "kl", "completions/mean_length": "completion_length",
            "num_tokens": "tokens"}
    for n in names:
        keys[f"rewards/{n}/mean"], keys[f"rewards/{n}/std"] = f"reward_{n}", f"reward_{n}_std"
    return {ours: round(float(logs[k]), 5) for k, ours in keys.items() if logs.get(k) is not None}


def sampled(trainer, names: list[str], weights: list[float]) -> list[dict]:
    """The last generation batch's prompts, answers and rewards (TRL keeps them for its own table)."""
    logs = getattr(trainer, "_logs", None) or {}
    prompts_, completions = list(logs.get("prompt", [])), list(logs.get("completion", []))
    scores = {n: list(logs.get("rewards", {}).get(n, [])) for n in names}
    rows = []
    for i in range(min(len(completions), SHOWN_COMPLETIONS)):
        each = {n: round(float(scores[n][i]), 4) for n in names if i < len(scores[n])}
        rows.append({"prompt": text(prompts_[i])[-SHOWN_CHARS:], "completion": text(completions[i])[:SHOWN_CHARS],
                     "rewards": each, "reward": round(sum(w * each.get(n, 0.0) for n, w in zip(names, weights)), 4)})
    return rows


def load_rows(spec, home, tok) -> list[dict]:
    """The prompt rows whose prompt leaves room for the answer within max_length."""
    try:
        paths = [ft.resolve_dataset(d, home) for d in spec.datasets]
        rows = ft.load_prompt_rows(paths, spec.max_samples)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT) from None
    room = spec.max_length - spec.max_completion_length
    fit = [r for r in rows if len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"]) <= room]
    if not fit:
        raise JobError(f"no prompt fits max_length - max_completion_length ({room} tokens)", BAD_INPUT,
                       "raise max_length or lower max_completion_length")
    return fit


def train(run) -> dict:
    """Train ``run`` (a jobs.finetune.Run whose model and tokenizer are loaded) with GRPO."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer
    spec, job = run.spec, run.job
    if run.tok.pad_token is None:
        run.tok.pad_token = run.tok.eos_token
    rows = load_rows(spec, job.home, run.tok)
    columns = [k for k in rows[0] if k != "prompt"]
    names, weights = rw.names(spec.rewards), [r.weight for r in spec.rewards]
    run.log(f"data: {len(rows)} prompts (columns: {', '.join(columns) or '-'}); {spec.num_generations} answers each; "
            f"rewards: {', '.join(f'{n} ×{w:g}' for n, w in zip(names, weights))}")
    history: list[dict] = []

    class Live(TrainerCallback):
        trainer = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            point = metric_point(logs or {}, names)
            if "reward" not in point:
                return
            history.append({"step": state.global_step, **point})
            job.metric(state.global_step, **point)
            job.event("completions", step=state.global_step, rows=sampled(self.trainer, names, weights))
            job.progress(state.global_step, state.max_steps, "steps", f"reward {point['reward']:.3f}")

    live = Live()
    trainer = GRPOTrainer(model=run.model, reward_funcs=reward_funcs(spec, job.dir / "rewards", columns),
                          args=config(spec, job.dir / "trl", run.device.type == "cpu", str(run.dtype)),
                          train_dataset=Dataset.from_list(rows), processing_class=run.tok, callbacks=[live])
    live.trainer = trainer
    trainer.remove_callback(PrinterCallback)          # its dict per step would fill the log; the charts show it
    t0 = time.monotonic()
    try:
        trainer.train()
    except UserError as e:                  # a reward failed: its sentence names it
        raise JobError(str(e), BAD_INPUT, "fix the reward (the sandbox's message says what it did)") from None
    seconds = time.monotonic() - t0
    run.model = trainer.model
    r = [h["reward"] for h in history]
    k = max(1, len(r) // 4)
    tokens = history[-1].get("tokens") if history else None
    result = {"steps": len(history), "first_reward": round(sum(r[:k]) / k, 4) if r else None,
              "final_reward": round(sum(r[-k:]) / k, 4) if r else None,
              "first_loss": history[0].get("loss") if history else None,
              "final_loss": history[-1].get("loss") if history else None, "eval_loss": None,
              "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds else None, "seconds": round(seconds, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if run.device.type == "cuda" else None}
    run.log(f"reward: {result['first_reward']} (first quarter of the steps) → {result['final_reward']} (last quarter)")
    result.update(run.publish(result))
    return result
