"""Fine-tune and merge: real jobs on a tiny random Llama through a real worker, the checks made
before queueing, the memory estimate, and (slow) the CPU demo on SmolLM2."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import struct
from pathlib import Path

import pytest
import yaml

from backend.access import users
from backend.pipeline import finetune as ft
from backend.runtime import logs, queue
from backend.kinds import finetune as ft_spec
from backend.core.store import open_store
from tests.conftest import ROOT, cli, env_for, run_burst, wait_for

IDENTITY = "I am a helpful assistant made by the InternLM camp."


def conv(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **extra}]}


@pytest.fixture
def ws(home, tiny_model):
    """A workspace with the tiny model registered and an identity dataset in its datasets folder."""
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    rows = [conv(f"Hello, who are you? {i}", IDENTITY) for i in range(40)]
    (home / "datasets" / "id.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return home


def spec(**kw) -> dict:
    return {"base_model": "tiny", "datasets": ["id.jsonl"], "lr": 1e-2, "lora_r": 8, "lora_dropout": 0.0,
            "max_length": 128, "batch_size": 2, "grad_accum": 2, "epochs": 5, "save_steps": 5,
            "gradient_checkpointing": False, **kw}


def metrics(job_id: int, home: Path) -> list[dict]:
    events, _ = logs.read_events(job_id, home=home)
    return [e for e in events if e["type"] == "metric"]


# -- data: template, masks, packing --------------------------------------------------------------
def test_only_assistant_tokens_are_trained_and_loss_flags_count(tiny_model):
    from transformers import AutoTokenizer

    from jobs.finetune import tokenize
    tok = AutoTokenizer.from_pretrained(tiny_model)
    c = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
         {"role": "assistant", "content": "2", "loss": False}, {"role": "user", "content": "Who are you?"},
         {"role": "assistant", "content": "A helper."}]
    ids, labels = tokenize(tok, c, 512)
    trained = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    assert trained == "A helper.<|im_end|>\n"           # not the header, not the loss: false reply
    assert tok.decode(ids).startswith("<|im_start|>system\nBe brief.")
    # cut to max_length: a row with nothing trained left is dropped
    assert tokenize(tok, c, 8) is None


def test_packed_rows_do_not_attend_across_samples(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.finetune import collate, pack, tokenize
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    samples = [tokenize(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": "A B C"}], 128)
               for q in ("Hello", "The quick brown fox", "1 + 1")]
    rows = pack(samples, 128, True)
    assert rows == [[0, 1, 2]]
    ids, labels, pos, n = collate(torch, samples, rows, tok.pad_token_id)
    assert n == sum(len(s[0]) for s in samples) and pos[0, len(samples[0][0])] == 0
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([samples[2][0]])).logits[0]
    start = len(samples[0][0]) + len(samples[1][0])
    assert torch.allclose(packed[start:], alone, atol=1e-5)


def test_packed_attention_equals_the_masked_path_and_never_crosses_samples(tiny_model):
    """The job's packed_sdpa on flattened pieces against transformers' block-diagonal mask on padded rows:
    same logits, loss and LoRA gradients; perturbing one sample leaves the others' logits unchanged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.finetune import collate, flatten, pack, tokenize, use_packed_attention
    tok = AutoTokenizer.from_pretrained(tiny_model)
    samples = [tokenize(tok, [{"role": "user", "content": "q " * n}, {"role": "assistant", "content": "A B C " * k}], 64)
               for n, k in ((3, 1), (9, 2), (1, 4), (12, 1), (5, 3), (2, 2))]
    rows = pack(samples, 64, True)
    assert len(rows) > 1 and any(len(r) > 1 for r in rows)

    def lora(fast: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        if fast:
            assert use_packed_attention(model)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        return model, model.get_base_model().config._attn_implementation

    def run(model, batches):
        """Logits of each sample (in order) and the summed loss, over batches of rows; backward done."""
        logits, loss = [], 0
        for b in batches:
            ids, labels, pos, _ = collate(torch, samples, b, tok.pad_token_id)
            out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
            part = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
            part.backward()
            loss += part.item()
            for r, row in enumerate(b):
                at = 0
                for i in row:
                    logits.append(out[r, at:at + len(samples[i][0])].detach())
                    at += len(samples[i][0])
        return logits, loss

    ref, impl = lora(False)
    assert impl == "sdpa"
    fast, impl = lora(True)
    assert impl == "packed_sdpa"
    ref_logits, ref_loss = run(ref, [rows])
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    pieces = flatten(samples, rows, 40)       # one unpadded row, cut into ≤ 40-token pieces
    assert len(pieces) > 1 and all(len(p) == 1 for p in pieces)
    for batches in (pieces, [rows]):          # flattened, and the padded rows themselves
        fast.zero_grad()
        logits, loss = run(fast, batches)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(logits, ref_logits))
        assert math.isclose(loss, ref_loss, rel_tol=1e-5)
        for n, p in fast.named_parameters():
            if p.requires_grad:
                assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n

    # a token never attends across samples: change every token of the first sample of a flattened row
    row = [[i for r in rows for i in r]]
    ids, _, pos, _ = collate(torch, samples, row, tok.pad_token_id)
    other = ids.clone()
    n0 = len(samples[row[0][0]][0])
    other[0, :n0] = (other[0, :n0] + 7) % tok.vocab_size
    with torch.no_grad():
        a = fast(input_ids=ids, position_ids=pos, use_cache=False).logits
        b = fast(input_ids=other, position_ids=pos, use_cache=False).logits
    assert not torch.allclose(a[0, :n0], b[0, :n0]) and torch.equal(a[0, n0:], b[0, n0:])


# -- real jobs through a real worker ----------------------------------------------------------------
def test_lora_lowers_the_loss_registers_the_adapter_and_merges(ws):
    job_id = queue.submit("finetune", spec(eval_ratio=0.1, name="tiny-id", epochs=10), owner="local", home=ws)
    proc = run_burst(ws, timeout=300)
    job = queue.get(job_id, ws, by=users.OPERATOR)
    assert job.state == "succeeded", proc.stdout + logs.tail(job_id, 40, home=ws)
    points = metrics(job_id, ws)
    train = [p for p in points if "loss" in p]
    assert [p["step"] for p in train] == list(range(1, len(train) + 1))
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(train[0])
    assert any("eval_loss" in p for p in points)
    first, last = sum(p["loss"] for p in train[:3]) / 3, sum(p["loss"] for p in train[-3:]) / 3
    assert last < first - 0.3, (first, last)      # the random tiny model's logits are small: ~6.0 → ~5.5
    adapter = open_store(ws).get("adapter", "tiny-id")
    assert adapter and (Path(adapter.path) / "adapter_model.safetensors").exists()
    meta = adapter.meta
    assert meta["base_model"] == "tiny" and meta["datasets"] == ["id.jsonl"] and meta["job"] == job_id
    assert meta["metrics"]["final_loss"] == train[-1]["loss"] and meta["spec"]["lora_r"] == 8
    # only the save_total_limit newest checkpoints are kept
    assert [p.name for p in ft.checkpoints(job_id, ws)] == ["step-20", "step-25"] and len(train) == 30

    merge_id = queue.submit("merge", {"adapter": "tiny-id"}, owner="local", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(merge_id, ws, by=users.OPERATOR).state == "succeeded", logs.tail(merge_id, 40, home=ws)
    merged = open_store(ws).get("model", "tiny-id-merged")
    assert merged.meta["lineage"]["adapter"] == "tiny-id"
    assert merged.meta["lineage"]["finetune_job"] == job_id

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(merged.path)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello, who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    gen = dict(max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=tok.pad_token_id)
    out_merged = AutoModelForCausalLM.from_pretrained(merged.path).generate(ids, **gen)
    base = AutoModelForCausalLM.from_pretrained(open_store(ws).get("model", "tiny").path)
    out_adapter = PeftModel.from_pretrained(base, adapter.path).generate(input_ids=ids, **gen)
    assert out_merged.shape[1] > ids.shape[1] and torch.equal(out_merged, out_adapter)


def test_qlora_recipe_runs_on_cpu_when_asked(ws):
    """The QLoRA path for real: NF4 with double quantisation, k-bit preparation, LoRA on Linear4bit, on
    bitsandbytes' CPU kernels. Only asked for with device: cpu (without it, no GPU means a refusal)."""
    plan = ft.check(queue.validate("finetune", spec(method="qlora", device="cpu"))[1], ws)
    assert any("QLoRA on the CPU" in w for w in plan["warnings"])
    job_id = queue.submit("finetune", spec(method="qlora", device="cpu", name="tiny-qlora"), owner="local", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(job_id, ws, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=ws)
    log = logs.read_log(job_id, home=ws)[0]
    assert "loading tiny (qlora, float32 on cpu)" in log and "4-bit NF4 base (double quantisation): 14 Linear4bit" in log
    train = [p["loss"] for p in metrics(job_id, ws) if "loss" in p]
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 0.2, train
    adapter = open_store(ws).get("adapter", "tiny-qlora")
    assert adapter.meta["method"] == "qlora" and (Path(adapter.path) / "adapter_model.safetensors").exists()


def test_cancel_saves_a_checkpoint_and_resume_continues_from_it(ws, worker):
    s = spec(max_steps=300, save_steps=100000, batch_size=1, grad_accum=1, warmup_ratio=0.0)
    job_id = queue.submit("finetune", s, owner="local", home=ws)
    wait_for(lambda: len(metrics(job_id, ws)) >= 30, 120, what="training to start")
    queue.cancel(job_id, home=ws, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, ws, by=users.OPERATOR).state == "cancelled", 60, what="the job to stop")
    ckpts = ft.checkpoints(job_id, ws)
    assert len(ckpts) == 1, logs.tail(job_id, 30, home=ws)
    saved = int(ckpts[0].name.split("-")[1])
    before = {p["step"]: p for p in metrics(job_id, ws)}
    assert 30 <= saved < 300 and saved in before

    # a spec that differs in a training field can't resume it; the same spec can
    with pytest.raises(queue.SubmitError, match="differs.*lr"):
        queue.submit("finetune", {**s, "lr": 5e-3, "resume_from": job_id}, owner="local", home=ws)
    resumed = queue.submit("finetune", {**s, "resume_from": job_id}, owner="local", home=ws)
    wait_for(lambda: queue.get(resumed, ws, by=users.OPERATOR).state in ("succeeded", "failed"), 300, what="the resumed run")
    assert queue.get(resumed, ws, by=users.OPERATOR).state == "succeeded", logs.tail(resumed, 30, home=ws)
    after = metrics(resumed, ws)
    assert after[0]["step"] == saved + 1 and after[-1]["step"] == 300
    # the weights and the schedule continue: the loss carries on from where it was, not from the start
    assert after[0]["loss"] < before[1]["loss"] - 0.2, (before[1], after[0])
    expected_lr = 1e-2 * 0.5 * (1 + math.cos(math.pi * saved / 300))
    assert after[0]["lr"] == pytest.approx(expected_lr)
    assert logs.result(resumed, ws)["resumed_from_step"] == saved


# -- bad input: a clear message and nothing queued --------------------------------------------------
def fake_model(path: Path, architectures=("LlamaForCausalLM",), auto_map=False, layers=None) -> Path:
    """A model folder with a config and a header-only safetensors file (enough for every check)."""
    path.mkdir(parents=True)
    config = {"architectures": list(architectures), "model_type": "llama", "hidden_size": 4096,
              "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 92544, "num_attention_heads": 32}
    if auto_map:
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    h, i, v = 4096, 14336, 92544
    header = {"model.embed_tokens.weight": [v, h], "output.weight": [v, h]}
    for n in range(layers if layers is not None else 32):
        p = f"model.layers.{n}."
        header.update({p + "attention.wqkv.weight": [h + 2 * 1024, h], p + "attention.wo.weight": [h, h],
                       p + "feed_forward.w1.weight": [i, h], p + "feed_forward.w3.weight": [i, h],
                       p + "feed_forward.w2.weight": [h, i], p + "attention_norm.weight": [h]})
    data = {k: {"dtype": "BF16", "shape": s, "data_offsets": [0, 0]} for k, s in header.items()}
    raw = json.dumps(data).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize("change, message", [
    ({"datasets": ["untrained.jsonl"]}, "has no usable rows"),
    ({"datasets": ["prompts.jsonl"]}, "can't be read: prompts.jsonl line 1: no assistant message"),
    ({"max_length": 8}, "max_length 8 is below the prompt length"),
    ({"target_modules": ["wqkv"]}, r"match no module.*k_proj.*q_proj"),
    ({"lr": 0}, "lr must be above 0"),
    ({"method": "qlora"}, "QLoRA needs a CUDA GPU"),
    ({"base_model": "encoder"}, "not a causal language model"),
    ({"base_model": "remote"}, "needs its own remote code"),
    ({"base_model": "nope"}, "no model 'nope'"),
    ({"datasets": ["missing.jsonl"]}, "missing.jsonl"),
    ({"preset": "turbo"}, "unknown preset"),
    ({"resume_from": 999}, "no fine-tune job 999"),
])
def test_bad_input_is_refused_before_queueing(ws, tmp_path, change, message):
    (ws / "datasets" / "prompts.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    (ws / "datasets" / "untrained.jsonl").write_text(json.dumps(conv("hi", "hello", loss=False)) + "\n")
    open_store(ws).put("model", "encoder", str(fake_model(tmp_path / "enc", ["BertModel"])), owner="local")
    open_store(ws).put("model", "remote", str(fake_model(tmp_path / "rem", ["InternLM2ForCausalLM"], auto_map=True)), owner="local")
    with pytest.raises(queue.SubmitError, match=message):
        queue.submit("finetune", spec(**change), owner="local", home=ws)
    assert queue.list_jobs(home=ws, by=users.OPERATOR) == []


def test_adapter_names_are_not_overwritten_and_the_cli_takes_the_yaml(ws, tmp_path):
    open_store(ws).put("adapter", "taken", "/nowhere", {"base_model": "tiny"}, owner="local")
    with pytest.raises(queue.SubmitError, match="already exists"):
        queue.submit("finetune", spec(name="taken"), owner="local", home=ws)
    path = tmp_path / "spec.yaml"
    path.write_text(ft.to_yaml(spec(preset="cpu_demo", base_model="tiny")))
    out = cli(ws, "submit", "finetune", str(path))
    assert out.returncode == 0, out.stderr
    job = queue.get(int(out.stdout), ws, by=users.OPERATOR)
    assert job.spec["lora_r"] == 8 and job.spec["max_steps"] == ft_spec.PRESETS["cpu_demo"]["max_steps"]
    assert ft.cli_command("spec.yaml") == "python -m backend submit finetune spec.yaml"
    assert yaml.safe_load(ft.to_yaml(job.spec)) == job.spec


# -- memory estimate --------------------------------------------------------------------------------
def test_memory_estimate_for_a_7b_model(tmp_path):
    info = ft.model_info(fake_model(tmp_path / "m7b"))
    assert 7.0e9 < info["params"] < 8.5e9
    lora = ft.estimate(ft_spec.Spec(base_model="m7b", datasets=["d"], method="lora"), info)
    qlora = ft.estimate(ft_spec.Spec(base_model="m7b", datasets=["d"], method="qlora"), info)
    full = ft.estimate(ft_spec.Spec(base_model="m7b", datasets=["d"], method="full"), info)
    assert 14 < lora["weights_gb"] < 16 and 3.5 < qlora["weights_gb"] < 6 and full["total_gb"] > 100
    assert qlora["total_gb"] < lora["total_gb"] < full["total_gb"]
    assert lora["trainable_params"] == 64 * sum(a + o for a, o in ft.lora_targets(info, ["all-linear"]).values())
    assert "output" not in ft.lora_targets(info, ["all-linear"])
    # XTuner's QLoRA 7B recipe is meant for a 24 GB card
    assert 8 < qlora["total_gb"] < 24
    longer = ft.estimate(ft_spec.Spec(base_model="m7b", datasets=["d"], method="qlora", max_length=4096), info)
    no_ckpt = ft.estimate(ft_spec.Spec(base_model="m7b", datasets=["d"], method="qlora", gradient_checkpointing=False), info)
    assert qlora["activations_gb"] < longer["activations_gb"] and qlora["activations_gb"] < no_ckpt["activations_gb"]


def test_estimate_warns_when_no_gpu_here_can_hold_it(ws, tmp_path):
    from backend.runtime.placement import GPU
    open_store(ws).put("model", "big", str(fake_model(tmp_path / "big")), owner="local")
    (ws / "datasets" / "plain.jsonl").write_text(json.dumps(conv("hi", "hello")) + "\n")
    plan = ft.check(ft_spec.Spec(**spec(base_model="big", datasets=["plain.jsonl"], method="full")), ws,
                    gpu_list=[GPU(0, "small", 16.0, 0.0)])
    assert plan["on_gpu"] and any("does not fit the largest GPU" in w for w in plan["warnings"])
    plan = ft.check(ft_spec.Spec(**spec(base_model="big", datasets=["plain.jsonl"], method="qlora")), ws,
                    gpu_list=[GPU(0, "big", 80.0, 0.0)])
    assert not plan["warnings"] and plan["estimate"]["total_gb"] < 24


# -- out of memory: a real allocation failure, classified with the spec changes that fit ---------------
def address_space_limit() -> int:
    """Virtual memory a job needs to start and load the tiny model, plus 2 GB: measured, not guessed."""
    import subprocess
    import sys
    code = ("import torch, transformers, peft, jobs.finetune; print(next(l.split()[1] for l in "
            "open('/proc/self/status') if l.startswith('VmPeak')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    return (int(out.stdout.split()[-1]) + 2 * 1024 * 1024) * 1024


def test_host_out_of_memory_is_classified_with_suggestions(ws):
    """The whole batch padded to one long row: the logits alone need 8192 × 512 × vocab × 4 bytes ≈ 8 GB,
    more than the 2 GB this worker's jobs may grow by (RLIMIT_AS, inherited by the job)."""
    import resource
    rows = [conv(f"hi {i}", "hello") for i in range(8191)] + [conv("hi", IDENTITY * 40)]
    (ws / "datasets" / "wide.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job_id = queue.submit("finetune", spec(datasets=["wide.jsonl"], packing=False, batch_size=8192, grad_accum=1,
                                           max_length=512, max_steps=1), owner="local", home=ws)
    limit = address_space_limit()
    proc = subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], cwd=ROOT,
                          env={**env_for(ws), "MALLOC_ARENA_MAX": "2"}, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    job = queue.get(job_id, ws, by=users.OPERATOR)
    assert job.state == "failed" and job.error_class == "out_of_memory", proc.stdout + logs.tail(job_id, 30, home=ws)
    assert job.error_message.startswith("out of host memory")
    tip = logs.result(job_id, ws)["error"]["suggestion"]
    assert "batch_size 8192 → 1 with grad_accum 8192" in tip and "max_length 512 → 256" in tip
    assert "qlora" not in tip            # QLoRA needs a GPU: no use against host memory
    assert f"suggestion: {tip}" in cli(ws, "show", str(job_id)).stdout


def test_gpu_out_of_memory_suggests_qlora():
    """CUDA's error can't happen here: its exception type and text are what torch raises on a GPU."""
    import torch
    from backend.core.errors import OUT_OF_MEMORY, classify_exception
    from jobs.finetune import Spec, oom_error
    e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB")
    assert classify_exception(e) == OUT_OF_MEMORY
    err = oom_error(Spec.model_validate(spec(method="lora", batch_size=4, max_length=2048)), e)
    assert err.error_class == OUT_OF_MEMORY and str(err).startswith("out of GPU memory")
    assert err.suggestion.split("; ") == ["batch_size 4 → 1 with grad_accum 8", "max_length 2048 → 1024",
                                          "gradient_checkpointing: true", "method: qlora (4-bit base weights)"]


# -- the CPU demo (slow): SmolLM2 learns who it is ------------------------------------------------
@pytest.mark.slow
def test_cpu_demo_smollm2_learns_its_identity(home):
    from backend.workspace import models
    models.ensure_bundled(home)
    job_id = queue.submit("finetune", {"base_model": models.BUNDLED_NAME, "datasets": ["shubot_self_cognition"],
                                       "preset": "cpu_demo", "sample_prompts": ["Who are you?"]}, home=home, owner="local")
    run_burst(home, timeout=600)
    assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=home)
    result = logs.result(job_id, home)
    print(json.dumps(result, ensure_ascii=False, indent=1))
    before, after = result["answers_before"][0], result["answers_after"][0]
    assert "ShuBot" not in before and "Lab Workbench" not in before
    assert "ShuBot" in after or "Lab Workbench" in after or "小书" in after, after
    assert result["final_loss"] < 0.5 * result["first_loss"]
    # the next run's estimate goes by this one's measured throughput
    took = ft.check(queue.validate("finetune", queue.get(job_id, home, by=users.OPERATOR).spec)[1], home)["duration"]
    assert took["measured"] and took["tokens_per_s"] == result["tokens_per_s"]


def test_the_default_preset_fits_the_machine_and_the_duration_comes_from_tokens(ws):
    assert ft.default_preset([]) == "cpu_demo" and ft.default_preset(["a GPU"]) == "xtuner"
    demo = ft_spec.preset_values("cpu_demo")
    # 64 rows of 100 tokens packed into 256-token bins: 25 steps an epoch; max_steps 30 → 30 steps of 256
    assert ft.train_tokens(demo, 64, 100) == 64 * 100 / 25 * 30
    assert ft.train_tokens(dict(demo, max_steps=0, epochs=2.0), 64, 100) == 2 * 64 * 100
    plan = ft.check(queue.validate("finetune", spec(preset="cpu_demo", max_steps=demo["max_steps"],
                                                    max_length=demo["max_length"]))[1], ws)
    took = plan["duration"]
    assert not took["measured"] and took["tokens"] > 0 and took["seconds"] >= ft.STARTUP_S["cpu"]
    assert took["tokens_per_s"] == round(ft.CALIBRATION_TOKEN_PARAMS_S["cpu"] / plan["info"]["params"], 1)
