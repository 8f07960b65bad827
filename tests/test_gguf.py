"""GGUF export: real export jobs through a real worker run llama.cpp's own converter (unpacked from the
llama-cpp-python sdist into .cache/llama.cpp once per machine); the files load back through transformers'
GGUF loader (the bundled model's path), registered with their lineage and their owner; (slow) SmolLM2
merged with a CPU-demo adapter answers the same after export."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.access import users
from backend.core import errors
from backend.runtime import logs, queue
from backend.core.store import open_store
from tests.conftest import ROOT, run_burst

PROMPT = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(autouse=True)
def converter_cache(monkeypatch):
    monkeypatch.setenv("WORKBENCH_LLAMA_CPP_DIR", str(ROOT / ".cache" / "llama.cpp"))


def load_gguf(entry):
    from pathlib import Path

    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(Path(entry.path), gguf_file=entry.meta["gguf_file"])


def test_export_f16_and_q8_0_load_back_with_their_lineage(home, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.tiny_model import make_tiny_llama_spm
    src = make_tiny_llama_spm(tmp_path / "tiny-spm")
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    users.add("ann", home=home)
    users.add("bob", home=home)
    open_store(home).put("model", "tiny", str(src), {"lineage": {"base_model": "base", "datasets": ["id.jsonl"]}},
                         owner="ann")
    with pytest.raises(queue.Refused, match="another student's"):
        queue.submit("export", {"model": "tiny"}, owner="bob", home=home)
    ids = [queue.submit("export", {"model": "tiny", "outtype": t}, owner="ann", home=home) for t in ("f16", "q8_0")]
    run_burst(home, timeout=600)
    for job_id in ids:
        assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=home)
    f16, q8 = (open_store(home).get("model", f"tiny-{t}-gguf") for t in ("f16", "q8_0"))
    assert f16.owner == q8.owner == "ann"
    assert f16.meta["lineage"] == {"base_model": "base", "exported_from": "tiny", "method": "gguf f16",
                                      "converter": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python==0.3.36)",
                                      "datasets": ["id.jsonl"], "export_job": ids[0]}
    assert q8.meta["size_bytes"] < 0.7 * f16.meta["size_bytes"]
    with pytest.raises(queue.SubmitError, match="already exists"):
        queue.submit("export", {"model": "tiny"}, owner="ann", home=home)
    with pytest.raises(queue.SubmitError, match="is a GGUF file already"):
        queue.submit("export", {"model": "tiny-f16-gguf"}, owner="ann", home=home)

    # loaded back: the source's weights (to f16 / q8_0 precision) and its logits; a random tiny model's top
    # tokens are near ties, so the same-answer check is SmolLM2's (below)
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(src)
    want = ref(ids).logits
    for entry, tol in ((f16, 1e-3), (q8, 2e-2)):
        model = load_gguf(entry)
        got = model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.allclose(got[k], v, atol=tol * v.abs().max().item()), (entry.name, k)
        assert (model(ids).logits - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.slow
@pytest.mark.timeout(1200)      # ~2.5 min on a quiet machine; the 10-step fine-tune took 8 min on 2 busy cores
def test_smollm2_merged_with_a_cpu_demo_adapter_answers_the_same_after_export(home):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.workspace import models
    models.ensure_bundled(home)
    ft = queue.submit("finetune", {"base_model": models.BUNDLED_NAME, "datasets": ["shubot_self_cognition"],
                                   "preset": "cpu_demo", "max_steps": 10, "name": "demo"}, home=home, owner="local")
    run_burst(home, timeout=600)
    assert queue.get(ft, home, by=users.OPERATOR).state == "succeeded", logs.tail(ft, 40, home=home)
    queue.submit("merge", {"adapter": "demo"}, home=home, owner="local")
    run_burst(home, timeout=600)
    export = queue.submit("export", {"model": "demo-merged", "outtype": "q8_0"}, home=home, owner="local")
    run_burst(home, timeout=600)
    assert queue.get(export, home, by=users.OPERATOR).state == "succeeded", logs.tail(export, 40, home=home)
    entry = open_store(home).get("model", "demo-merged-q8_0-gguf")
    assert entry.meta["lineage"]["base_model"] == models.BUNDLED_NAME

    def answer(tok, model):
        ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    merged = open_store(home).get("model", "demo-merged").path
    want = answer(AutoTokenizer.from_pretrained(merged), AutoModelForCausalLM.from_pretrained(merged))
    from pathlib import Path
    folder, name = Path(entry.path), entry.meta["gguf_file"]
    got = answer(AutoTokenizer.from_pretrained(folder, gguf_file=name), load_gguf(entry))
    print(want, "|", got)
    assert got == want and want.strip()


def test_a_failed_conversion_says_so_in_the_readers_language(home, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}')
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    open_store(home).put("model", "odd", str(folder), {}, owner="local")
    job_id = queue.submit("export", {"model": "odd"}, owner="local", home=home)
    run_burst(home, timeout=300)
    job, result = queue.get(job_id, home, by=users.OPERATOR), logs.result(job_id, home)
    assert job.state == "failed" and job.error_class == "bad_input"
    assert job.error_message == "llama.cpp's convert_hf_to_gguf.py failed (see the log above)"
    assert errors.job_message(result, "zh") == "llama.cpp 的 convert_hf_to_gguf.py 转换失败（见上方日志）"
    assert errors.job_suggestion(result, "zh").startswith("llama.cpp 只能转换它支持的架构")
    assert errors.job_suggestion(result, "en").startswith("llama.cpp converts the architectures")


@pytest.mark.slow
def test_a_gguf_export_is_served_for_chat_and_evaluated(home, worker, tmp_path):
    """The Models page's Chat and Evaluate on a GGUF entry: the serve job and the evaluate job read the .gguf with
    transformers' GGUF loader (dequantized into the job folder); the served answer is the GGUF's own."""
    import torch
    from transformers import AutoTokenizer

    from backend.pipeline import chat, evaluate as ev
    from tests.conftest import endpoint_of
    from tests.fixtures.tiny_model import make_tiny_llama_spm
    from tests.test_evaluate import SAMPLES, engine_or_skip, finished
    open_store(home).put("model", "tiny", str(make_tiny_llama_spm(tmp_path / "tiny-spm")), owner="local")
    export_id = queue.submit("export", {"model": "tiny", "outtype": "q8_0"}, owner="local", home=home)
    assert finished(home, export_id, 300).state == "succeeded", logs.tail(export_id, 40, home=home)
    entry = open_store(home).get("model", "tiny-q8_0-gguf")
    open_store(home).put("adapter", "a", str(tmp_path), {"base_model": "tiny-q8_0-gguf"}, owner="local")
    with pytest.raises(queue.SubmitError, match="is a GGUF file"):            # an adapter goes on a transformers model
        queue.submit("serve", {"adapter": "a"}, owner="local", home=home)

    serve_id = queue.submit("serve", {"model": "tiny-q8_0-gguf", "name": "gguf-ep"}, owner="local", home=home)
    ep = endpoint_of(home, serve_id, 240)
    served = "".join(chat.stream_chat(ep, chat.build_messages([], "Who are you?"), temperature=0.0, max_tokens=6,
                                      by=users.OPERATOR, home=home))
    folder, name = Path(entry.path), entry.meta["gguf_file"]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = load_gguf(entry).generate(ids, max_new_tokens=6, do_sample=False)
    assert served == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) and served
    assert "dequantizing" in logs.tail(serve_id, 80, home=home)
    queue.cancel(serve_id, home, by=users.OPERATOR)
    finished(home, serve_id, 30)

    engine_or_skip()
    [ref] = [m["ref"] for m in ev.model_choices(home, by=users.OPERATOR) if m["name"] == "tiny-q8_0-gguf"]
    assert ref == {"name": "tiny-q8_0-gguf", "path": entry.path, "gguf_file": name}
    job_id = ev.submit({"name": "gguf-eval", "models": [ref], "max_out_len": 4, "batch_size": 2,
                        "datasets": [{"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl"), "limit": 2}]}, owner="local", home=home)
    job = finished(home, job_id, 600)
    assert job.state == "succeeded", (job.error_message, logs.tail(job_id, 60, home=home))
    res = ev.result(job_id, home, by=users.OPERATOR)
    assert [(t["dataset"], t["model"]) for t in res["table"]] == [("easy_qa", "tiny-q8_0-gguf")]
