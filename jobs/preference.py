"""Preference tuning inside the finetune job (objective dpo | orpo | kto) on TRL, the library the
field uses: the model (LoRA, QLoRA or full) is loaded as for SFT; TRL renders each pair with the
model's chat template and trains the chosen/rejected (or labelled) answers. With LoRA the reference
model is the base without the adapter. Every logged step becomes a metric event: loss, lr, grad_norm
and TRL's rewards (margin, chosen, rejected, accuracy) for the page's live charts.
"""
from __future__ import annotations

import resource
import time

from backend.pipeline import finetune as ft
from backend.core.errors import BAD_INPUT
from jobs.common import JobError

# TRL's log keys → the metric names the page charts
METRIC_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "rewards/margins": "margin",
               "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
               "rewards/accuracies": "reward_accuracy", "kl": "kl"}


def trainer(run, rows: list[dict], callbacks=()):
    """The TRL trainer for ``run`` (a jobs.finetune.Run whose model and tokenizer are loaded)."""
    from datasets import Dataset
    spec = run.spec
    common = dict(output_dir=str(run.job.dir / "trl"), per_device_train_batch_size=spec.batch_size,
                  gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr,
                  num_train_epochs=spec.epochs, max_steps=spec.max_steps or -1, lr_scheduler_type=spec.scheduler,
                  warmup_steps=min(spec.warmup_ratio, 0.999), weight_decay=spec.weight_decay,   # <1: a ratio
                  max_grad_norm=spec.max_grad_norm or 1e9, seed=spec.seed, logging_steps=1, save_strategy="no",
                  report_to=[], use_cpu=run.device.type == "cpu", bf16=str(run.dtype) == "torch.bfloat16",
                  fp16=str(run.dtype) == "torch.float16", max_length=spec.max_length, beta=spec.beta,
                  disable_tqdm=True, gradient_checkpointing=spec.gradient_checkpointing, remove_unused_columns=False)
    if spec.objective == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer
    elif spec.objective == "kto":
        from trl import KTOConfig as Config, KTOTrainer as Trainer
    else:
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
    return Trainer(model=run.model, args=Config(**common), train_dataset=Dataset.from_list(rows),
                   processing_class=run.tok, callbacks=list(callbacks))


def train(run) -> dict:
    """Train ``run`` (model loaded) with its preference objective; returns the result dict."""
    from transformers import TrainerCallback
    spec, job = run.spec, run.job
    try:
        paths = [ft.resolve_dataset(d, job.home) for d in spec.datasets]
        rows = ft.load_preference_rows(paths, spec.objective, spec.max_samples)
    except ValueError as e:
        raise JobError(str(e), BAD_INPUT) from None
    run.log(f"data: {len(rows)} {'pairs' if spec.objective != 'kto' else 'labelled rows'} for {spec.objective.upper()}")
    history = []

    class Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            point = {ours: round(float(logs[k]), 5) for k, ours in METRIC_KEYS.items() if k in (logs or {})}
            if "loss" in point:
                history.append({"step": state.global_step, **point})
                job.metric(state.global_step, **point)
                job.progress(state.global_step, state.max_steps, "steps", f"loss {point['loss']:.4f}")

    t0 = time.monotonic()
    trl_trainer = trainer(run, rows, [Metrics()])
    trl_trainer.train()
    run.model = trl_trainer.model
    losses = [h["loss"] for h in history]
    margins = [h["margin"] for h in history if "margin" in h]
    result = {"steps": len(history), "first_loss": losses[0] if losses else None,
              "final_loss": losses[-1] if losses else None, "eval_loss": None,
              "first_margin": margins[0] if margins else None, "final_margin": margins[-1] if margins else None,
              "tokens_per_s": None, "seconds": round(time.monotonic() - t0, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    result.update(run.publish(result))
    return result
