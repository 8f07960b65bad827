"""Evaluate: format checks, checks before queueing, results helpers, and a real OpenCompass run
(tiny model + a LoRA adapter on it, bundled MCQ + QA sets) through a real worker."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from backend import evaluate as ev
from backend import queue
from backend.store import open_store
from jobs.evaluate import custom_format
from tests.conftest import ROOT, run_burst, shot, wait_for

SAMPLES = ROOT / "assets" / "datasets"
ENGINES_DIR = Path(os.environ.get("WORKBENCH_ENGINES_DIR") or ROOT / ".cache" / "envs")


def engine_or_skip() -> Path:
    if not (ENGINES_DIR / "opencompass" / ".installed").exists():
        msg = (f"the opencompass engine is not installed in {ENGINES_DIR} "
               "(docs/evaluate.md: install it once with the engine_install job)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return ENGINES_DIR


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- fast ---------------------------------------------------------------------------------------
def test_custom_format(tmp_path):
    assert custom_format(SAMPLES / "easy_mcq.jsonl") == ("mcq", "")
    assert custom_format(SAMPLES / "easy_qa.jsonl") == ("qa", "")
    fmt, why = custom_format(write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "x"}]}]))
    assert fmt == "" and "missing field(s) question, answer" in why and "found: messages" in why
    fmt, why = custom_format(write_jsonl(tmp_path / "one.jsonl", [{"question": "q", "A": "a", "answer": "A"}]))
    assert fmt == "" and "B" in why
    (tmp_path / "x.txt").write_text("hi")
    assert "reads .jsonl or .csv" in custom_format(tmp_path / "x.txt")[1]


def test_checks_before_queueing(home, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_ENGINES_DIR", str(tmp_path / "no-engines"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}])
    problems = ev.check({"models": [{"name": "tiny", "path": str(tiny_model)}],
                         "datasets": [{"name": "bad", "path": str(bad)}]}, home)
    assert len(problems) == 1 and "missing field(s) question, answer" in problems[0]
    problems = ev.check({"models": [{"name": "m", "path": str(tmp_path)}],
                         "datasets": [{"name": "q", "path": str(SAMPLES / "easy_qa.jsonl")}]}, home)
    assert "not a model folder" in problems[0]
    spec = {"models": [{"name": "tiny", "path": str(tiny_model)}],
            "datasets": [{"name": "q", "path": str(SAMPLES / "easy_qa.jsonl")}]}
    assert "engine is not installed" in ev.check(spec, home)[0]
    with pytest.raises(queue.SubmitError, match="engine is not installed"):
        ev.submit(spec, home=home)
    # offered install: the engine_install job is queued first and the evaluation waits for it
    job_id = ev.submit(spec, install_engine_if_missing=True, home=home)
    install = ev.engine_install_job(home)
    assert install and install < job_id and ev.install_engine(home=home) == install


def test_standard_dataset_without_data(home, tiny_model, tmp_path, monkeypatch):
    # a minimal engine layout: the config of gsm8k_gen and OpenCompass's data-id mapping
    engines = tmp_path / "engines"
    pkg = engines / "opencompass" / "lib" / "python3.11" / "site-packages" / "opencompass"
    (pkg / "configs" / "datasets" / "gsm8k").mkdir(parents=True)
    (pkg / "utils").mkdir()
    (pkg / "configs" / "datasets" / "gsm8k" / "gsm8k_gen.py").write_text(
        "from mmengine.config import read_base\nwith read_base():\n    from .gsm8k_gen_x import gsm8k_datasets\n")
    (pkg / "configs" / "datasets" / "gsm8k" / "gsm8k_gen_x.py").write_text(
        "gsm8k_datasets = [dict(abbr='gsm8k', path='opencompass/gsm8k')]\n")
    (pkg / "utils" / "datasets_info.py").write_text(
        "DATASETS_MAPPING = {'opencompass/gsm8k': {'ms_id': 'x', 'hf_id': 'x', 'local': './data/gsm8k/'}}\n")
    from backend.engines import requirements
    (engines / "opencompass" / ".installed").write_text("\n".join(requirements("opencompass")) + "\n")
    monkeypatch.setenv("WORKBENCH_ENGINES_DIR", str(engines))
    monkeypatch.setenv("COMPASS_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.cache/opencompass fallback
    spec = {"models": [{"name": "tiny", "path": str(tiny_model)}], "datasets": [{"name": "g", "config": "gsm8k_gen"}]}
    problems = ev.check(spec, home)
    assert len(problems) == 1 and "gsm8k_gen is not in COMPASS_DATA_CACHE" in problems[0] and "data/gsm8k" in problems[0]
    (tmp_path / "cache" / "data" / "gsm8k").mkdir(parents=True)
    assert ev.check(spec, home) == []
    assert "no standard config named nope_gen" in ev.check(
        {**spec, "datasets": [{"name": "n", "config": "nope_gen"}]}, home)[0]
    assert ev.standard_choices(home) == [{"name": "gsm8k_gen", "missing": []}]


def test_results_helpers():
    res = {"models": [{"name": "base", "path": "/m", "peft_path": ""}, {"name": "lora", "path": "/m", "peft_path": "/a"}],
           "table": [{"dataset": "d", "metric": "accuracy", "mode": "gen", "model": "base", "score": 25.0},
                     {"dataset": "d", "metric": "accuracy", "mode": "gen", "model": "lora", "score": 75.0}],
           "items": [{"model": "base", "dataset": "d", "index": 0, "prompt": "p", "prediction": "B", "gold": "A",
                      "correct": False},
                     {"model": "lora", "dataset": "d", "index": 0, "prompt": "p", "prediction": "A", "gold": "A",
                      "correct": True}]}
    assert ev.table(res) == [{"dataset": "d", "metric": "accuracy", "base": 25.0, "lora": 75.0}]
    assert ev.deltas(res)[0]["delta"] == 50.0
    assert [i["model"] for i in ev.items(res, wrong_only=True)] == ["base"]
    assert ev.to_csv(res).splitlines()[1] == "d,accuracy,gen,base,25.0"
    assert "prediction" in ev.to_csv(res, "items").splitlines()[0]


# -- a real OpenCompass run ---------------------------------------------------------------------
def make_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def finished_eval(tmp_path_factory, tiny_model):
    """One real evaluation (tiny base + its adapter, MCQ + QA, 4 items each) run by a real worker."""
    engines = engine_or_skip()
    home = tmp_path_factory.mktemp("evalhome") / "workspace"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(home))
        mp.setenv("WORKBENCH_ENGINES_DIR", str(engines))
        adapter = make_adapter(tiny_model, home / "adapters" / "tiny-lora")
        store = open_store(home)
        store.put("model", "tiny", str(tiny_model))
        store.put("adapter", "tiny-lora", str(adapter), {"base_model": "tiny"})
        models = {m["name"]: m["ref"] for m in ev.model_choices(home)}
        spec = {"name": "tiny-vs-lora", "models": [models["tiny"], models["tiny-lora"]], "max_out_len": 8,
                "batch_size": 4, "datasets": [{"name": "easy_mcq", "path": str(SAMPLES / "easy_mcq.jsonl"), "limit": 4},
                                              {"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl"), "limit": 4}]}
        job_id = ev.submit(spec, home=home)
        out = run_burst(home, timeout=900, WORKBENCH_ENGINES_DIR=str(engines))
    return home, job_id, out


@pytest.mark.slow
def test_real_evaluation(finished_eval):
    home, job_id, out = finished_eval
    job = queue.get(job_id, home)
    log = (home / "jobs" / str(job_id) / "run.log").read_text()
    assert job["state"] == "succeeded", (job["error_message"], out.stdout, log[-3000:])
    res = ev.result(job_id, home)
    assert {(t["model"], t["dataset"], t["metric"]) for t in res["table"]} == {
        (m, d, "accuracy") for m in ("tiny", "tiny-lora") for d in ("easy_mcq", "easy_qa")}
    assert all(0 <= t["score"] <= 100 for t in res["table"])
    assert len(res["items"]) == 16 and all(set(i) >= {"prompt", "prediction", "gold", "correct"} for i in res["items"])
    assert all(isinstance(i["correct"], bool) for i in res["items"])
    assert {d["adapter"] for d in ev.deltas(res)} == {"tiny-lora"}
    entry = open_store(home).get("eval", "tiny-vs-lora")
    assert entry["job_id"] == job_id and entry["meta"]["models"] == ["tiny", "tiny-lora"]
    assert entry["meta"]["datasets"] == ["easy_mcq", "easy_qa"]
    assert [r["name"] for r in ev.runs(home)] == ["tiny-vs-lora"]
    events = [json.loads(x) for x in (home / "jobs" / str(job_id) / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["type"] == "progress" and e["total"] == 8 and e["done"] == 8]


@pytest.mark.slow
def test_failed_task_is_reported(home, tiny_model, tmp_path, monkeypatch):
    engines = engine_or_skip()
    monkeypatch.setenv("WORKBENCH_ENGINES_DIR", str(engines))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    spec = {"models": [{"name": "broken", "path": str(broken)}], "max_out_len": 4,
            "datasets": [{"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl"), "limit": 1}]}
    job_id = ev.submit(spec, home=home)
    run_burst(home, timeout=600, WORKBENCH_ENGINES_DIR=str(engines))
    job = queue.get(job_id, home)
    assert job["state"] == "failed"
    assert "broken on easy_qa" in job["error_message"] and "logs/infer/broken" in job["error_message"]
    assert job["error_class"] == "bad_input", job["error_message"]
    assert ev.result(job_id, home) is None and open_store(home).items("eval") == []


@pytest.mark.slow
@pytest.mark.browser
def test_results_page(finished_eval, home, page):
    src_home, src_id, _ = finished_eval
    store, src = open_store(home), queue.get(src_id, src_home)
    job_id = store.insert_job("evaluate", "local", src["spec"], src["asked"], label=src["label"])
    for state in ("starting", "running", "succeeded"):
        store.transition(job_id, state)
    shutil.copytree(src_home / "jobs" / str(src_id), home / "jobs" / str(job_id))
    page.set_viewport_size({"width": 1400, "height": 2200})     # the whole page: table, chart, delta, answers
    page.goto(page.base_url + "/evaluate")
    page.locator(".st-key-eval_results").wait_for()
    wait_for(lambda: page.locator(".st-key-eval_results").get_by_text("easy_mcq").count(), 30, what="results table")
    page.locator(".st-key-eval_delta").wait_for()
    page.locator(".st-key-eval_items_csv").wait_for()
    page.locator(".st-key-eval_items [data-testid='stDataFrame']").wait_for()
    shot(page, "evaluate")
