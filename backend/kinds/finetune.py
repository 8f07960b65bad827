"""The finetune job's spec: every field, its default (XTuner's recipe), the presets, and the
submit-time checks (``resources``). The Fine-tune page, ``queue.submit`` and ``jobs/finetune.py``
all read it from here."""
from __future__ import annotations

from pathlib import Path

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.kinds import Kind
from backend import finetune as ft
from backend.errors import UserError

KIND = Kind("finetune", "jobs.finetune", doc="LoRA / QLoRA / full fine-tune of a chat model (transformers + peft)")

# XTuner's InternLM2 chat QLoRA/LoRA config (internlm2_chat_7b_qlora_oasst1_e3): the Spec defaults.
XTUNER = dict(lora_r=64, lora_alpha=16, lora_dropout=0.1, target_modules=["all-linear"], lr=2e-4,
              weight_decay=0.0, max_grad_norm=1.0, scheduler="cosine", warmup_ratio=0.03, max_length=2048,
              packing=True, epochs=3.0, max_steps=0, batch_size=1, grad_accum=16, save_steps=500,
              save_total_limit=2, gradient_checkpointing=True)


PRESETS: dict[str, dict] = {
    "xtuner": XTUNER,
    # SmolLM2-135M on 2 CPU cores in a few minutes: high lr, small rank, short rows, no checkpointing.
    "cpu_demo": dict(XTUNER, lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=2e-3, warmup_ratio=0.1,
                     max_length=256, packing=True, epochs=1.0, max_steps=30, batch_size=1, grad_accum=1,
                     save_steps=10, gradient_checkpointing=False, max_samples=64, device="cpu"),
}


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str                                   # registry model name
    datasets: list[str] = Field(min_length=1)         # registry dataset names (any training format)
    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")   # adapter name; "" = automatic
    method: Literal["lora", "qlora", "full"] = "lora"
    # sft: conversations; pretrain: plain text, packed, loss on every token, no template;
    # dpo / orpo: chosen/rejected pairs, kto: labelled answers (TRL)
    objective: Literal["sft", "pretrain", "dpo", "orpo", "kto"] = "sft"
    beta: float = Field(0.1, gt=0)                  # dpo/orpo/kto: how far from the reference (ORPO: its lambda)
    preset: Literal["xtuner", "cpu_demo"] | None = None   # fills the fields the spec leaves out
    lora_r: int = Field(XTUNER["lora_r"], ge=1)
    lora_alpha: int = Field(XTUNER["lora_alpha"], ge=1)
    lora_dropout: float = Field(XTUNER["lora_dropout"], ge=0, lt=1)
    target_modules: list[str] = Field(XTUNER["target_modules"], min_length=1)
    lr: float = XTUNER["lr"]
    weight_decay: float = Field(XTUNER["weight_decay"], ge=0)
    max_grad_norm: float = Field(XTUNER["max_grad_norm"], ge=0)    # 0: no clipping
    scheduler: Literal["cosine", "linear", "constant"] = XTUNER["scheduler"]
    warmup_ratio: float = Field(XTUNER["warmup_ratio"], ge=0, le=1)
    max_length: int = Field(XTUNER["max_length"], ge=8)
    packing: bool = XTUNER["packing"]
    epochs: float = Field(XTUNER["epochs"], gt=0)
    max_steps: int = Field(XTUNER["max_steps"], ge=0)              # 0: from epochs
    batch_size: int = Field(XTUNER["batch_size"], ge=1)
    grad_accum: int = Field(XTUNER["grad_accum"], ge=1)
    gradient_checkpointing: bool = XTUNER["gradient_checkpointing"]
    save_steps: int = Field(XTUNER["save_steps"], ge=1)
    save_total_limit: int = Field(XTUNER["save_total_limit"], ge=1)
    eval_ratio: float = Field(0.0, ge=0, lt=1)                # rows held out for eval_loss
    eval_steps: int = Field(0, ge=0)                          # 0: evaluate at the end only
    max_samples: int = Field(0, ge=0)                         # 0: every row
    seed: int = 42
    device: Literal["auto", "cpu", "gpu"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"   # auto: bf16 (else fp16) on GPU, fp32 on CPU
    gpu_mem_gb: float | None = Field(None, gt=0)              # ask the queue for this instead of the estimate
    # besides TensorBoard (always): W&B / SwanLab offline runs in the job folder (wandb/, swanlog/), synced later
    trackers: list[Literal["wandb", "swanlab"]] = Field([], max_length=2)
    sample_prompts: list[str] = []                            # answered greedily before and after training
    resume: bool = False
    resume_from: int | None = None

    @model_validator(mode="before")
    @classmethod
    def fill_from_preset(cls, data):
        if isinstance(data, dict) and data.get("preset"):
            preset = PRESETS.get(data["preset"])
            if preset is None:
                raise UserError("err.ft.preset", preset=data['preset'], presets=", ".join(PRESETS))
            data = {**preset, **data}
        return data

    @field_validator("lr")
    @classmethod
    def positive_lr(cls, v: float) -> float:
        if v <= 0:
            raise UserError("err.ft.lr", value=v)
        return v


def check(spec: Spec, home: Path, owner: str) -> dict:
    """Called once at submit time: the checks against the workspace (model, data, GPU) and the
    GPU memory the queue should reserve. Raises ValueError → SubmitError with a readable message."""
    plan = ft.check(spec, home=home)
    if not plan["on_gpu"]:
        return {"gpus": 0, "gpu_mem_gb": 0.0}
    return {"gpus": 1, "gpu_mem_gb": spec.gpu_mem_gb or plan["estimate"]["total_gb"]}


# -- for the page --------------------------------------------------------------------------------
ADVANCED = ["lora_r", "lora_alpha", "lora_dropout", "target_modules", "lr", "epochs", "max_steps", "batch_size",
            "grad_accum", "max_length", "packing", "gradient_checkpointing", "save_steps", "save_total_limit",
            "eval_ratio", "eval_steps", "max_samples", "seed", "scheduler", "warmup_ratio", "weight_decay",
            "max_grad_norm", "device", "dtype"]


def choices(field: str) -> list[str]:
    """The allowed values of a choice field of the finetune spec (scheduler, device, dtype), else []."""
    return [a for a in typing.get_args(Spec.model_fields[field].annotation) if isinstance(a, str)]


def preset_values(preset: str) -> dict:
    """Every advanced field's value under a preset (the Spec's own defaults fill the rest)."""
    defaults_ = {k: f.default for k, f in Spec.model_fields.items()}
    return {k: PRESETS[preset].get(k, defaults_.get(k)) for k in ADVANCED}
