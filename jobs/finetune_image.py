"""The finetune job's image-text modality (``modality: image_text``): LoRA (or QLoRA) on the language model
of an image-text model (LLaVA-style, InternVL HF format, any ``AutoModelForImageTextToText``) with the vision
tower frozen; ``train_projector`` also trains the projector/aligner (saved with the adapter); ``method: full``
trains the whole language model (the vision tower stays frozen).

Each row is rendered by the model's processor (its chat template, its image tokens): the text is tokenized
once without images to find which tokens are assistant replies, and the processor's ids (image tokens
expanded) are aligned to it; image tokens and every prompt token get label -100, so only assistant turns are
trained. Rows are not packed (the image features go where the row's image tokens are); a row too long for
``max_length`` is cut after its last image token or dropped. Images are processed again for every batch
(nothing but the paths stays in memory). The run itself (steps, checkpoints, resume, cancel, metrics,
the adapter with its lineage) is jobs/finetune.py's ``Run``, which ``ImageText`` is mixed into.
"""
from __future__ import annotations

import difflib
import random

from backend.pipeline import finetune as ft
from backend.workspace import formats, image_text
from backend.core.errors import BAD_INPUT, MISSING_ENGINE
from backend.workspace.images import open_image
from jobs.common import JobError

DEFAULT_QUESTION = "Describe the image."


def lora_modules(model, targets: list[str]) -> list[str]:
    """The language model's linear layers a target list selects (``all-linear``: all of them), by full name:
    never the vision tower, the projector or the output head."""
    import torch
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or image_text.part_of(name) != "language":
            continue
        if targets == ["all-linear"] or any(name == t or name.endswith("." + t) for t in targets):
            out.append(name)
    return out


def parts(m: dict) -> dict:
    """A message with ``<image>`` markers as content parts (image, text) the way processors' templates take
    them; a message without markers keeps its string."""
    text = m["content"]
    if image_text.IMAGE_MARK not in text:
        return {k: v for k, v in m.items() if k != "loss"}
    out = []
    for i, piece in enumerate(text.split(image_text.IMAGE_MARK)):
        if i:
            out.append({"type": "image"})
        piece = piece.lstrip("\n") if i else piece
        if piece:
            out.append({"type": "text", "text": piece})
    return {"role": m["role"], "content": out}


def render(processor, msgs: list[dict], gen: bool = False) -> str:
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def tokenize(processor, conv: list[dict], images: list, max_length: int):
    """(ids, labels) of one image-text row as the processor makes its input (image tokens expanded), -100
    wherever nothing is trained (the prompt, every image token), and the rendered text; None when nothing
    trained fits in ``max_length`` or the cut would split an image."""
    tok = processor.tokenizer
    msgs = [parts(m) for m in conv]
    full = render(processor, msgs)
    spans = []
    for k, m in enumerate(conv):
        if not formats.trained(m):
            continue
        upto = render(processor, msgs[:k + 1])
        before = render(processor, msgs[:k], gen=m["role"] == "assistant") if k else ""
        if full.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
        elif (at := full.find(m["content"])) >= 0:
            spans.append((at, at + len(m["content"])))      # template not prefix-stable: the text only
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    plain = enc["input_ids"]
    plain_labels = [t if i > 0 and any(s <= a < e for s, e in spans) else -100
                    for i, (t, (a, _)) in enumerate(zip(plain, enc["offset_mapping"]))]
    ids = processor(text=[full], images=images or None, return_tensors="pt")["input_ids"][0].tolist()
    labels = [-100] * len(ids)
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, plain, ids, autojunk=False).get_opcodes():
        if op == "equal":
            labels[b0:b1] = plain_labels[a0:a1]
    image_ids = image_token_ids(processor)
    labels = [-100 if t in image_ids else x for t, x in zip(ids, labels)]
    if len(ids) > max_length:
        if any(t in image_ids for t in ids[max_length:]):
            return None
        ids, labels = ids[:max_length], labels[:max_length]
    if all(x == -100 for x in labels):
        return None
    return ids, labels, full


def image_token_ids(processor) -> set[int]:
    """Every token id a processor puts where an image goes: the image token, and InternVL's ``<img>`` /
    ``</img>`` around its context tokens, Qwen2-VL's vision start/end, Gemma's begin/end of image."""
    tok, out = processor.tokenizer, set(getattr(processor, "image_token_ids", None) or [])
    for attr in ("image_token", "start_image_token", "end_image_token", "image_start_token", "image_end_token",
                 "boi_token", "eoi_token", "vision_start_token", "vision_end_token"):
        value = getattr(processor, attr, None) or getattr(tok, attr, None)
        if isinstance(value, str):
            out.add(tok.convert_tokens_to_ids(value))
    if getattr(processor, "image_token_id", None) is not None:
        out.add(processor.image_token_id)
    return out - {None, tok.unk_token_id}


def load_images(files) -> list:
    return [open_image(f.read_bytes(), f.name) for f in files]


class ImageText:
    """What jobs/finetune.py's ``Run`` does differently on an image-text model, its processor and rows with
    images (``jobs.finetune.ImageRun`` mixes it in)."""

    def load(self):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        spec = self.spec
        model_path, remote = self.prepare()
        problem = ft.device_problem(spec.method, spec.device, torch.cuda.is_available())
        if problem:
            raise JobError(problem, BAD_INPUT)
        on_gpu = torch.cuda.is_available() and spec.device != "cpu"
        self.device = torch.device("cuda" if on_gpu else "cpu")
        if spec.dtype == "auto":
            self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu else torch.float32
        else:
            self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.dtype]
        try:
            self.processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=remote)
        except (OSError, ValueError, TypeError) as e:
            raise JobError(f"{spec.base_model} has no image processor transformers can load ({e})", BAD_INPUT,
                           "fine-tune an image-text model in the transformers format (LLaVA, InternVL2 -hf, Qwen2-VL)") from None
        self.tok = self.processor.tokenizer
        if getattr(self.processor, "chat_template", None) is None and self.tok.chat_template is None:
            raise JobError(f"{spec.base_model} has no chat template", BAD_INPUT)
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
                bnb_4bit_compute_dtype=self.dtype, llm_int8_skip_modules=list(image_text.VISION + image_text.PROJECTOR + image_text.HEADS)))
        self.log(f"loading {spec.base_model} (image-text, {spec.method}, {str(self.dtype).replace('torch.', '')} "
                 f"on {self.device})")
        model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
        if spec.method != "qlora":
            model.to(self.device)
        model.config.use_cache = False
        self.flatten, self.piece_tokens = False, None
        for name, p in model.named_parameters():          # the vision tower never trains
            p.requires_grad = spec.method == "full" and (image_text.part_of(name) in ("language", "head")
                                                         or (spec.train_projector and image_text.part_of(name) == "projector"))
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method == "qlora":
            from peft import prepare_model_for_kbit_training
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method != "full":
            from peft import LoraConfig, get_peft_model
            targets = lora_modules(model, spec.target_modules)
            if not targets:
                raise JobError(f"no linear layer of {spec.base_model}'s language model matches target_modules "
                               f"{spec.target_modules}", BAD_INPUT, "use target_modules: [all-linear]")
            projector = sorted({n for n, _ in model.named_modules() if n.split(".")[-1] in image_text.PROJECTOR})
            config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                                target_modules=targets, task_type="CAUSAL_LM",
                                modules_to_save=projector[:1] if spec.train_projector and projector else None)
            model = get_peft_model(model, config)
        model.train()
        self.model = model
        self.keep_logits = False
        self.params = [p for p in model.parameters() if p.requires_grad]
        n_train, n_all = sum(p.numel() for p in self.params), sum(p.numel() for p in model.parameters())
        self.log(f"trainable parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%); vision tower frozen"
                 + ("; projector trained" if spec.train_projector else ""))

    def data(self):
        import math
        spec = self.spec
        try:
            rows = []
            for d in spec.datasets:
                rows += image_text.load_rows(ft.resolve_dataset(d, self.job.home), spec.max_samples or None)
        except ValueError as e:
            raise JobError(str(e), BAD_INPUT) from None
        rows = [r for r in rows if ft.usable(r[0])][:spec.max_samples or None]
        random.Random(spec.seed).shuffle(rows)
        n_eval = int(len(rows) * spec.eval_ratio)
        tokenized = []
        for conv, files in rows:
            out = tokenize(self.processor, conv, load_images(files), spec.max_length)
            tokenized.append(None if out is None else (out[0], out[1], (out[2], tuple(files))))
        train = [s for s in tokenized[n_eval:] if s]
        self.eval_samples = [s for s in tokenized[:n_eval] if s]
        if not train:
            raise JobError(f"no row has a trained token within max_length {spec.max_length} (image tokens count)",
                           BAD_INPUT, "raise max_length or check the data's assistant replies")
        self.samples = train
        self.rows = [[i] for i in range(len(train))]
        self.eval_rows = [[i] for i in range(len(self.eval_samples))]
        self.micro_per_epoch = math.ceil(len(self.rows) / spec.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / spec.grad_accum)
        self.total = spec.max_steps or math.ceil(spec.epochs * self.steps_per_epoch)
        images = sum(len(s[2][1]) for s in train)
        self.log(f"data: {len(train)} rows with {images} images ({sum(len(s[0]) for s in train)} tokens, image "
                 f"tokens included); {len(self.eval_samples)} eval rows; {len(tokenized) - len(train) - len(self.eval_samples)} "
                 f"dropped; {self.steps_per_epoch} steps/epoch, {self.total} steps")

    def pieces(self, samples, rows):
        return [rows]

    def forward_loss(self, torch, samples, rows, n_items: int):
        """Summed token loss of a batch of rows (padded on the right, with their images) over ``n_items``."""
        batch = [samples[i] for row in rows for i in row]
        texts = [s[2][0] for s in batch]
        images = [im for s in batch for im in load_images(s[2][1])]
        self.tok.padding_side = "right"
        enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        width = enc["input_ids"].shape[1]
        labels = torch.tensor([s[1] + [-100] * (width - len(s[1])) for s in batch])
        ids = enc["input_ids"][:, :labels.shape[1]]
        if [r[:len(s[0])] for r, s in zip(ids.tolist(), batch)] != [s[0] for s in batch]:
            raise JobError("the processor made different tokens for a row than when the data was read", BAD_INPUT)
        inputs = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype if self.device.type == "cuda" else torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            logits = self.model(**inputs, use_cache=False).logits
        targets = labels[:, 1:].to(self.device)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                 ignore_index=-100, reduction="sum") / max(1, n_items)
        return loss, sum(len(s[0]) for s in batch)

    def answers(self, torch) -> list[str]:
        spec = self.spec
        if not spec.sample_prompts and not spec.sample_images:
            return []
        root = image_text.root_of(ft.resolve_dataset(spec.datasets[0], self.job.home))
        self.model.eval()
        out = []
        with torch.no_grad():
            for k in range(max(len(spec.sample_prompts), len(spec.sample_images))):
                question = spec.sample_prompts[k] if k < len(spec.sample_prompts) else DEFAULT_QUESTION
                files = [image_text.resolve_image(root, spec.sample_images[k])] if k < len(spec.sample_images) else []
                content = [{"type": "image"} for _ in files] + [{"type": "text", "text": question}]
                prompt = render(self.processor, [{"role": "user", "content": content}], gen=True)
                enc = self.processor(text=[prompt], images=load_images(files) or None, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"}
                gen = self.model.generate(**inputs, max_new_tokens=40, do_sample=False, pad_token_id=self.pad_id,
                                          use_cache=True)
                out.append(self.tok.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        self.model.train()
        return out

    def publish(self, result: dict) -> dict:
        made = super().publish(result)
        self.processor.save_pretrained(made["path"])       # the image processor and chat template beside it
        return made
