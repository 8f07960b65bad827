"""The finetune job's spec: every field, its default (XTuner's recipe), the presets, and the
submit-time checks (``resources``). The Fine-tune page, ``queue.submit`` and ``jobs/finetune.py``
all read it from here."""
from __future__ import annotations

from pathlib import Path

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.kinds import Kind
from backend.pipeline import finetune as ft
from backend.core.errors import UserError
from backend.pipeline.rewards import Reward

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
    # GRPO on SmolLM2-135M-Instruct + LoRA on CPU: 4 answers of ≤ 48 tokens per prompt, a length reward that
    # rises within a few minutes (docs/finetune.md, GRPO)
    "grpo_cpu_demo": dict(XTUNER, objective="grpo", lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=5e-4,
                          warmup_ratio=0.0, scheduler="constant", max_length=256, epochs=1.0, max_steps=30,
                          batch_size=4, grad_accum=1, save_steps=1000, gradient_checkpointing=False,
                          max_samples=64, device="cpu", beta=0.0, num_generations=4, max_completion_length=48,
                          temperature=1.0, rewards=[{"kind": "length", "target": 60}]),
    # GRPO on a GPU (InternLM2.5-1.8B with LoRA; a 7B with method qlora): 8 answers of ≤ 512 tokens per prompt,
    # rewarded for the <think>…</think><answer>…</answer> format and a right answer (GSM8K-style data)
    "grpo_gpu": dict(XTUNER, objective="grpo", lora_r=16, lora_alpha=32, lora_dropout=0.05, lr=2e-5,
                     warmup_ratio=0.0, scheduler="constant", max_length=1024, epochs=1.0, max_steps=200, batch_size=8,
                     grad_accum=2, save_steps=100, gradient_checkpointing=True, beta=0.04, num_generations=8,
                     max_completion_length=512, temperature=1.0,
                     rewards=[{"kind": "format", "weight": 0.5}, {"kind": "answer", "match": "math"}]),
    # image-text (modality image_text, docs/finetune.md "Image-text"): the camp's InternVL lab (InternVL2-2B,
    # transformers format, on one GPU), XComposer2-VL-1.8B (remote code: the registry's opt-in), a LLaVA-style
    # model, and a CPU demo that proves the loop on a tiny model
    "internvl2_2b": dict(XTUNER, modality="image_text", method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05,
                         lr=1e-4, max_length=4096, packing=False, epochs=1.0, batch_size=1, grad_accum=8,
                         save_steps=100, gradient_checkpointing=True, device="gpu"),
    "xcomposer2_vl": dict(XTUNER, modality="image_text", method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05,
                          lr=1e-4, max_length=4096, packing=False, epochs=1.0, batch_size=1, grad_accum=8,
                          save_steps=100, gradient_checkpointing=True, device="gpu"),
    "llava": dict(XTUNER, modality="image_text", method="lora", lora_r=64, lora_alpha=16, lora_dropout=0.05, lr=2e-4,
                  max_length=2048, packing=False, epochs=1.0, batch_size=4, grad_accum=4, save_steps=200,
                  gradient_checkpointing=True, train_projector=True),
    "vlm_cpu_demo": dict(XTUNER, modality="image_text", lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=5e-3,
                         warmup_ratio=0.0, max_length=256, packing=False, epochs=1.0, max_steps=20, batch_size=2,
                         grad_accum=1, save_steps=10, gradient_checkpointing=False, max_samples=64, device="cpu"),
}
GRPO_FIELDS = ["num_generations", "max_completion_length", "temperature", "beta"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str                                   # registry model name
    datasets: list[str] = Field(min_length=1)         # registry dataset names (any training format)
    name: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")   # adapter name; "" = automatic
    method: Literal["lora", "qlora", "full"] = "lora"
    # sft: conversations; pretrain: plain text, packed, loss on every token, no template;
    # dpo / orpo: chosen/rejected pairs, kto: labelled answers (TRL)
    # grpo: prompts answered num_generations times, scored by the rewards (TRL's GRPOTrainer)
    objective: Literal["sft", "pretrain", "dpo", "orpo", "kto", "grpo"] = "sft"
    beta: float = Field(0.1, ge=0)                  # dpo/orpo/kto: how far from the reference (ORPO: its lambda); grpo: the KL weight (0: no KL)
    preset: Literal["xtuner", "cpu_demo", "grpo_cpu_demo", "grpo_gpu", "internvl2_2b", "xcomposer2_vl", "llava",
                    "vlm_cpu_demo"] | None = None   # fills the fields the spec leaves out
    rewards: list[Reward] = []                      # grpo: the rewards and their weights (backend/pipeline/rewards.py)
    num_generations: int = Field(8, ge=2)           # grpo: answers per prompt (the group)
    max_completion_length: int = Field(256, ge=1)   # grpo: tokens per answer
    temperature: float = Field(1.0, gt=0)           # grpo: sampling temperature
    # text: chat / text rows; image_text: rows with images on an image-text model (vision tower frozen)
    modality: Literal["text", "image_text"] = "text"
    train_projector: bool = False                     # image_text: also train the projector/aligner
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
    sample_images: list[str] = []                             # image_text: the k-th prompt's image (in the first dataset's folder)
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

    @model_validator(mode="after")
    def beta_for_objective(self):
        if self.beta == 0 and self.objective not in ("grpo", "sft", "pretrain"):
            raise UserError("err.ft.beta", objective=self.objective)
        return self

    @model_validator(mode="after")
    def image_text_rules(self):
        if self.modality == "image_text" and self.objective != "sft":
            raise UserError("err.it.objective", objective=self.objective)
        if self.modality == "image_text":
            self.packing = False                      # each row's image features go where its image tokens are
        elif self.sample_images or self.train_projector:
            raise UserError("err.it.text_fields")
        return self

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
            "max_grad_norm", "device", "dtype", "train_projector"]


def choices(field: str) -> list[str]:
    """The allowed values of a choice field of the finetune spec (scheduler, device, dtype), else []."""
    return [a for a in typing.get_args(Spec.model_fields[field].annotation) if isinstance(a, str)]


def preset_values(preset: str) -> dict:
    """Every advanced field's (and GRPO field's, and the rewards') value under a preset (the Spec's own
    defaults fill the rest)."""
    defaults_ = {k: f.default for k, f in Spec.model_fields.items()}
    return {k: PRESETS[preset].get(k, defaults_.get(k)) for k in ADVANCED + GRPO_FIELDS + ["rewards"]}


def presets_for(objective: str, image_text: bool = False) -> list[str]:
    """The presets made for ``objective`` (GRPO's for grpo) and the modality (image-text's for image_text)."""
    return [p for p, v in PRESETS.items() if (v.get("objective") == "grpo") == (objective == "grpo")
            and (v.get("modality", "text") == "image_text") == image_text]
