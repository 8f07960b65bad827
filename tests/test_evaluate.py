"""Evaluate: format checks, checks before queueing, results helpers, and real OpenCompass runs through
real workers: tiny model + a LoRA adapter on it (bundled MCQ + QA sets), a live `serve` endpoint as an
OpenAI-API model, a standard config (gsm8k_gen) on an offline copy of its data, and a cancel."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from backend.core.job import Job
from backend.access import users
from backend.pipeline import evaluate as ev
from backend.runtime import logs, queue
from backend.core.i18n import t as ui_t
from backend.core.store import open_store
from jobs.evaluate import custom_format
from tests.conftest import ROOT, endpoint_of, pick, run_burst, shot, wait_for

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
    assert custom_format(SAMPLES / "easy_mcq.jsonl") == ("mcq", None)
    assert custom_format(SAMPLES / "easy_qa.jsonl") == ("qa", None)
    fmt, why = custom_format(write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "x"}]}]))
    assert fmt == "" and "missing field(s) question, answer" in str(why) and "found: messages" in str(why)
    fmt, why = custom_format(write_jsonl(tmp_path / "one.jsonl", [{"question": "q", "A": "a", "answer": "A"}]))
    assert fmt == "" and "B" in str(why)
    (tmp_path / "x.txt").write_text("hi")
    assert "reads .jsonl or .csv" in str(custom_format(tmp_path / "x.txt")[1])


CHATML = ROOT / "tests" / "fixtures" / "opencompass" / "chatml_demo.jsonl"


def test_an_opencompass_chatml_file_is_not_evaluated_as_qa(home, tiny_model):
    """Read as QA, the list of messages itself became the prompt: the file is refused with a sentence."""
    fmt, why = custom_format(CHATML)
    assert fmt == "" and str(why).startswith("chatml_demo.jsonl is in OpenCompass's ChatML form") and \
        "ChatML 格式" in why.text("zh")
    problems = ev.check({"models": [{"name": "tiny", "path": str(tiny_model)}],
                         "datasets": [{"name": "chatml", "path": str(CHATML)}]}, home)
    assert any("ChatML form" in p for p in problems), problems


def unreadable_sets(home: Path) -> dict[str, str]:
    """Datasets the Evaluate form can't use, each registered as the student's: name -> what the reason names."""
    from backend.workspace import datasets as ds
    d = ds.datasets_dir(home)
    (d / "gbk_qa.jsonl").write_bytes('{"question": "中国的首都是哪里？", "answer": "北京"}\n'.encode("gbk"))
    (d / "latin1.csv").write_bytes("question,answer\ncafé?,crème\n".encode("latin-1"))
    (d / "chatml.jsonl").write_bytes(CHATML.read_bytes())
    for f in ("gbk_qa.jsonl", "latin1.csv", "chatml.jsonl"):
        ds.register(d / f, Path(f).stem, "upload", home, owner="local")
    return {"gbk_qa": "GBK/GB18030 编码的中文", "latin1": "不是 UTF-8 文本", "chatml": "ChatML 格式"}


def test_evaluate_problems_are_sentences_in_the_users_language(home):
    """What the Evaluate form lists as not usable: keyed sentences, never "'utf-8' codec can't decode ..."."""
    sets = unreadable_sets(home)
    open_store(home).put("adapter", "orphan", str(home), {"base_model": "gone"}, owner="local")
    choices = {d["name"]: d for d in ev.dataset_choices(home, by="local")}
    for name, says in sets.items():
        problem = choices[name]["problem"]
        assert choices[name]["ref"] is None and says in problem.text("zh"), (name, problem.text("zh"))
        assert "codec" not in problem.text("zh") and "could not be read" not in problem.text("zh")
    [orphan] = [m for m in ev.model_choices(home, by="local") if m["name"] == "orphan"]
    assert orphan["problem"].text("zh") == "其基座模型 'gone' 不在注册表中"


@pytest.mark.browser
def test_the_evaluate_page_lists_unusable_datasets_in_chinese(home, page):
    unreadable_sets(home)
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.goto(page.base_url + "/evaluate?lang=zh")
    page.get_by_text(re.compile("^不可用：")).click()
    for says in ("GBK/GB18030 编码的中文", "不是 UTF-8 文本", "ChatML 格式"):
        page.get_by_text(says).first.wait_for()
    assert not page.get_by_text("codec").count() and not page.get_by_text("could not be read").count()
    shot(page, "evaluate-unusable-zh")


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
        ev.submit(spec, home=home, owner="local")
    # offered install: the engine_install job is queued first and the evaluation waits for it
    job_id = ev.submit(spec, install_engine_if_missing=True, home=home, owner="local")
    install = ev.engine_install_job(home)
    assert install and install < job_id and ev.install_engine(home=home, owner="local") == install


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
    from backend.runtime.engines import requirements
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
        store.put("model", "tiny", str(tiny_model), owner="local")
        store.put("adapter", "tiny-lora", str(adapter), {"base_model": "tiny"}, owner="local")
        models = {m["name"]: m["ref"] for m in ev.model_choices(home, by=users.OPERATOR)}
        spec = {"name": "tiny-vs-lora", "models": [models["tiny"], models["tiny-lora"]], "max_out_len": 8,
                "batch_size": 4, "datasets": [{"name": "easy_mcq", "path": str(SAMPLES / "easy_mcq.jsonl"), "limit": 4},
                                              {"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl"), "limit": 4}]}
        job_id = ev.submit(spec, home=home, owner="local")
        out = run_burst(home, timeout=900, WORKBENCH_ENGINES_DIR=str(engines))
    return home, job_id, out


@pytest.mark.slow
def test_real_evaluation(finished_eval):
    home, job_id, out = finished_eval
    job = queue.get(job_id, home, by=users.OPERATOR)
    log = (home / "jobs" / str(job_id) / "run.log").read_text()
    assert job.state == "succeeded", (job.error_message, out.stdout, log[-3000:])
    res = ev.result(job_id, home, by=users.OPERATOR)
    assert {(t["model"], t["dataset"], t["metric"]) for t in res["table"]} == {
        (m, d, "accuracy") for m in ("tiny", "tiny-lora") for d in ("easy_mcq", "easy_qa")}
    assert all(0 <= t["score"] <= 100 for t in res["table"])
    assert len(res["items"]) == 16 and all(set(i) >= {"prompt", "prediction", "gold", "correct"} for i in res["items"])
    assert all(isinstance(i["correct"], bool) for i in res["items"])
    assert {d["adapter"] for d in ev.deltas(res)} == {"tiny-lora"}
    entry = open_store(home).get("eval", "tiny-vs-lora")
    assert entry.job_id == job_id and entry.meta["models"] == ["tiny", "tiny-lora"]
    assert entry.meta["datasets"] == ["easy_mcq", "easy_qa"]
    assert [r["name"] for r in ev.runs(home, by=users.OPERATOR)] == ["tiny-vs-lora"]
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
    job_id = ev.submit(spec, home=home, owner="local")
    run_burst(home, timeout=600, WORKBENCH_ENGINES_DIR=str(engines))
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "failed"
    assert "broken on easy_qa" in job.error_message and "logs/infer/broken" in job.error_message
    assert job.error_class == "bad_input", job.error_message
    assert ev.result(job_id, home, by=users.OPERATOR) is None and open_store(home).items("eval") == []


@pytest.mark.slow
@pytest.mark.browser
def test_results_page(finished_eval, home, page):
    src_home, src_id, _ = finished_eval
    store, src = open_store(home), queue.get(src_id, src_home, by=users.OPERATOR)
    job_id = store.insert_job("evaluate", "local", src.spec, src.asked, label=src.label)
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


# -- a live `serve` endpoint as an OpenAI-API model ----------------------------------------------
def finished(home: Path, job_id: int, timeout: float) -> Job:
    return wait_for(lambda: (j := queue.get(job_id, home, by=users.OPERATOR)).state in ("succeeded", "failed", "cancelled", "lost")
                    and j, timeout, 0.2, f"job {job_id} to end")


@pytest.mark.slow
def test_endpoint_evaluation(home, worker, tiny_model):
    engine_or_skip()
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    serve_id = queue.submit("serve", {"model": "tiny"}, home=home, owner="local")       # default name "tiny #<id>"
    ep = endpoint_of(home, serve_id, 180)
    # the page's model list offers the running endpoint with its URL, served model name and tokenizer
    [choice] = [m for m in ev.model_choices(home, by=users.OPERATOR) if m["kind"] == "endpoint"]
    ref = choice["ref"]
    assert choice["name"] == f"tiny #{serve_id}" and choice["url"] == ep["url"]
    assert ref == {"name": f"tiny-{serve_id}", "url": ep["url"], "api_model": str(tiny_model),
                   "tokenizer_path": str(tiny_model)}
    secret = "sk-test-do-not-log-7f3a"
    spec = {"name": "served", "models": [ref], "max_out_len": 8, "batch_size": 2,
            "datasets": [{"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl"), "limit": 3}]}
    requests_before = ep["requests"]
    job_id = ev.submit(spec, api_key=secret, home=home, owner="local")
    job = finished(home, job_id, 300)
    d = home / "jobs" / str(job_id)
    assert job.state == "succeeded", (job.error_message, (d / "run.log").read_text()[-3000:])
    res = ev.result(job_id, home, by=users.OPERATOR)
    assert [(t["dataset"], t["metric"], t["model"]) for t in res["table"]] == [("easy_qa", "accuracy", ref["name"])]
    assert 0 <= res["table"][0]["score"] <= 100
    assert len(res["items"]) == 3 and all(isinstance(i["prediction"], str) and i["prompt"] for i in res["items"])
    assert open_store(home).get("eval", "served").job_id == job_id
    # the answers came from the server (its request counter), and the serve job is still up
    wait_for(lambda: endpoint_of(home, serve_id, 180)["requests"] >= requests_before + 3, 10, 0.2, "requests counted")
    # the API key reached the job as an environment variable only
    assert not (d / "secrets.json").exists()
    for f in [*d.rglob("*"), home / "workbench.db", home / "worker.log"]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    queue.cancel(serve_id, home, by=users.OPERATOR)
    finished(home, serve_id, 30)


def test_unreachable_endpoint(home, tmp_path):
    gone = {"name": "gone", "url": "http://127.0.0.1:9/v1", "api_model": "m"}
    spec = {"models": [gone], "datasets": [{"name": "q", "path": str(SAMPLES / "easy_qa.jsonl")}]}
    problems = ev.check(spec, home)
    assert any("model gone: the endpoint at http://127.0.0.1:9/v1 cannot be reached" in p
               and "serve job" in p for p in problems), problems
    with pytest.raises(queue.SubmitError, match="cannot be reached"):
        ev.submit(spec, home=home, owner="local")
    assert "is not a tokenizer folder" in ev.check({**spec, "models": [{**gone, "tokenizer_path": str(tmp_path)}]},
                                                   home)[0]
    # queued anyway (the server stopped after the check): the job fails early, classified, with a suggestion
    job_id = queue.submit("evaluate", spec, home=home, owner="local")
    engines = engine_or_skip()
    run_burst(home, timeout=120, WORKBENCH_ENGINES_DIR=str(engines))
    job = queue.get(job_id, home, by=users.OPERATOR)
    assert job.state == "failed" and job.error_class == "bad_input", job
    assert "cannot be reached" in job.error_message
    assert "serve job" in logs.result(job_id, home)["error"]["suggestion"]


def test_endpoint_refuses_key(home):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            ok = self.headers.get("Authorization") == "Bearer right"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        spec = {"models": [{"name": "ext", "url": url, "api_model": "m"}],
                "datasets": [{"name": "q", "path": str(SAMPLES / "easy_qa.jsonl")}]}
        assert any("refused the API key (HTTP 401)" in p for p in ev.check(spec, home, api_key="wrong"))
        assert not any("endpoint" in p for p in ev.check(spec, home, api_key="right"))
    finally:
        server.shutdown()
        server.server_close()


# -- a standard OpenCompass dataset config on an offline copy of its data ------------------------
GSM8K = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
         ("A box holds 6 pens. How many pens are in 2 boxes?", "6 * 2 = 12\n#### 12"),
         ("Sara had 10 dollars and spent 3. How many dollars are left?", "10 - 3 = 7\n#### 7")]


def write_gsm8k(cache: Path) -> Path:
    """data/gsm8k/{train,test}.jsonl as OpenCompass's GSM8KDataset reads them (question, answer with
    the gold number after '#### ')."""
    d = cache / "data" / "gsm8k"
    d.mkdir(parents=True)
    rows = [{"question": q, "answer": a} for q, a in GSM8K]
    write_jsonl(d / "train.jsonl", rows[:1])
    write_jsonl(d / "test.jsonl", rows)
    return d


@pytest.mark.slow
def test_standard_dataset_run(home, tiny_model):
    engines = engine_or_skip()
    spec = {"models": [{"name": "tiny", "path": str(tiny_model)}], "max_out_len": 8, "max_seq_len": 512,
            "batch_size": 2, "datasets": [{"name": "gsm8k", "config": "gsm8k_gen", "limit": 2}]}
    assert any("gsm8k_gen is not in COMPASS_DATA_CACHE" in p for p in ev.check(spec, home))
    write_gsm8k(ev.data_cache(home))
    assert {"name": "gsm8k_gen", "missing": []} in ev.standard_choices(home) and ev.check(spec, home) == []
    job_id = ev.submit(spec, home=home, owner="local")
    out = run_burst(home, timeout=600, WORKBENCH_ENGINES_DIR=str(engines))
    job = queue.get(job_id, home, by=users.OPERATOR)
    d = home / "jobs" / str(job_id)
    assert job.state == "succeeded", (job.error_message, out.stdout, (d / "run.log").read_text()[-3000:])
    assert "max_out_len=8" in (d / "config.py").read_text()       # the spec's length, not the config's 512
    res = ev.result(job_id, home, by=users.OPERATOR)
    [row] = res["table"]
    assert (row["dataset"], row["metric"], row["mode"], row["model"]) == ("gsm8k", "accuracy", "gen", "tiny")
    assert 0 <= row["score"] <= 100
    items = ev.items(res, "tiny", "gsm8k")
    assert [i["reference"] for i in items] == ["7", "12"]          # gold after gsm8k's '#### ' post-processing
    assert items[1]["gold"] == GSM8K[1][1] and all(i["extracted"] for i in items)   # gsm8k_postprocess: "NULL" or a number
    assert GSM8K[0][0] in items[0]["prompt"] and all(isinstance(i["correct"], bool) for i in items)


# -- cancel --------------------------------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_cancel_running_evaluation(home, worker, tiny_model):
    engine_or_skip()
    spec = {"name": "to-cancel", "models": [{"name": "tiny", "path": str(tiny_model)}], "max_out_len": 16,
            "batch_size": 1, "datasets": [{"name": "easy_qa", "path": str(SAMPLES / "easy_qa.jsonl")}]}
    job_id = ev.submit(spec, home=home, owner="local")
    pid = wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).pid, 60, 0.1, "the job to start")
    d = home / "jobs" / str(job_id)
    # running OpenCompass: the CLI and its inference task (a shell and a python) beside the job process
    wait_for(lambda: list(d.glob("opencompass/*/logs/infer/tiny/*.out")) and len(group_pids(pid)) >= 3, 120, 0.1,
             "an OpenCompass inference task to run")
    queue.cancel(job_id, home, by=users.OPERATOR)
    job = finished(home, job_id, 60)
    assert job.state == "cancelled" and job.error_class == "cancelled"
    assert group_pids(pid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert ev.result(job_id, home, by=users.OPERATOR) is None and open_store(home).items("eval") == []
    assert [(r["job_id"], r["state"]) for r in ev.runs(home, by=users.OPERATOR)] == [(job_id, "cancelled")]


@pytest.mark.slow
@pytest.mark.browser
def test_page_offers_endpoints(home, page, tiny_model):
    """The form lists a running serve endpoint; it and an outside URL (with an API key) reach the spec,
    the key does not."""
    engine_or_skip()
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    serve_id = queue.submit("serve", {"model": "tiny"}, home=home, owner="local")
    ep = endpoint_of(home, serve_id, 180)
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.goto(page.base_url + "/evaluate")
    form = page.locator(".st-key-eval_form")
    form.wait_for()
    pick(page, "eval_models", f"tiny #{serve_id} (endpoint · {ep['url']})")
    pick(page, "eval_datasets", "easy_qa (QA)")
    page.keyboard.press("Escape")
    page.locator(".st-key-eval_ext").get_by_text("Also evaluate an OpenAI-compatible URL").click()
    page.locator(".st-key-eval_ext_url input").fill(ep["url"])
    page.locator(".st-key-eval_ext_model input").fill(ep["model"])
    secret = "sk-page-secret-91c2"
    page.locator(".st-key-eval_ext_key input").fill(secret)
    page.locator(".st-key-eval_ext_key input").press("Enter")
    pick(page, "eval_ext_tokenizer", "tiny")
    page.locator(".st-key-eval_limit input").fill("2")
    page.locator(".st-key-eval_limit input").press("Enter")
    wait_for(lambda: page.locator(".st-key-eval_limit input").input_value() == "2"
             and not page.locator("[data-stale='true']").count(), 30, 0.1, "the rerun to finish")
    shot(page, "evaluate-endpoint")
    page.locator(".st-key-eval_submit button").click()
    job_id = wait_for(lambda: [j.id for j in queue.list_jobs(kind="evaluate", home=home, by=users.OPERATOR)], 30, what="a job")[0]
    page.get_by_text(ui_t("job.queued_as", id=job_id)).wait_for()
    spec = queue.get(job_id, home, by=users.OPERATOR).spec
    assert spec["models"] == [{"name": f"tiny-{serve_id}", "url": ep["url"], "api_model": str(tiny_model),
                               "peft_path": "", "path": "", "tokenizer_path": str(tiny_model), "gguf_file": ""},
                              {"name": "tiny-llama", "url": ep["url"], "api_model": str(tiny_model),
                               "peft_path": "", "path": "", "tokenizer_path": str(tiny_model), "gguf_file": ""}]
    assert [(d["name"], d["limit"]) for d in spec["datasets"]] == [("easy_qa", 2)]
    queue.cancel(job_id, home, by=users.OPERATOR)
    finished(home, job_id, 60)
    for f in [*(home / "jobs" / str(job_id)).rglob("*"), home / "workbench.db"]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
