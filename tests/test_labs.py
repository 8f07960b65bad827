"""Labs: lab files (loading, a malformed file named with its line, reload without a restart), each check failing
with a clear sentence when its artifact is missing or wrong and passing on the real thing, a student's check never
reading another student's artifacts, signed evidence that `labs verify` accepts and refuses after one byte changes.

Servers are the fake OpenAI server (tests/fixtures/fake_openai.py: it answers "<model> answer ...", so a server
whose model id is the assistant's name says the name) registered as jobs/serve.py registers endpoints, on a running
job row of the student's; the slow test runs the real fine-tune, serve and lab_check jobs on the tiny model."""
import json
import os
import time
from pathlib import Path

import pytest

from backend.access import users
from backend.pipeline import labs
from backend.runtime import logs, queue
from backend.workspace import datasets
from backend.core.paths import job_dir
from backend.core.registry import endpoint_meta
from backend.core.states import JobState
from backend.core.store import open_store
from jobs.common import Job
from jobs.serve import register
from tests.conftest import cli, endpoint_of, wait_for
from tests.fixtures.fake_openai import KEY, FakeOpenAI

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def job(home, kind: str, owner: str, state=JobState.SUCCEEDED, result: dict | None = None, events=(), spec=None,
        pid: int | None = None) -> int:
    """A job row of ``owner``'s in ``state``, with the files a job of that kind leaves (result.json, events.jsonl)."""
    store = open_store(home)
    job_id = store.insert_job(kind, owner, spec or {}, {})
    store.transition(job_id, JobState.STARTING)
    store.transition(job_id, JobState.RUNNING, pid=pid)
    if state != JobState.RUNNING:
        store.transition(job_id, state)
    d = job_dir(job_id, home)
    (d / "artifacts").mkdir(parents=True, exist_ok=True)
    if result is not None:
        (d / "result.json").write_text(json.dumps({"ok": True, **result}))
    (d / "events.jsonl").write_text("".join(json.dumps({"t": time.time(), "type": t, **e}) + "\n" for t, e in events))
    return job_id


def serve(home, fake, owner: str, tuned_model: str, base_model: str, source: str, job_id: int | None = None) -> int:
    """A running serve job of ``owner``'s (or job ``job_id``) with its tuned endpoint and the base beside it, as
    jobs/serve.py registers them."""
    job_id = job_id or job(home, "serve", owner, JobState.RUNNING, pid=os.getpid())
    name = f"{source} #{job_id}"
    meta = lambda model, src, **x: endpoint_meta(fake.url + "/v1", model, "transformers", "cpu", job_id, src, 1.0,  # noqa: E731
                                                 2048, api_key=KEY, **x)
    job_dir(job_id, home).mkdir(parents=True, exist_ok=True)
    register(Job(job_dir(job_id, home)), {name: (home, meta(tuned_model, source)),
                                          f"{BASE} #{job_id}": (home, meta(base_model, BASE, base_of=name))})
    return job_id


def adapter(home, owner: str, name: str, dataset: str) -> None:
    """An adapter as jobs/finetune.py registers it: the job's owner's."""
    ft = job(home, "finetune", owner, result={"first_loss": 3.0, "final_loss": 0.5, "adapter": name})
    folder = home / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights of " + name.encode())
    open_store(home).put("adapter", name, str(folder), {"base_model": BASE, "datasets": [dataset]}, job_id=ft,
                         owner=owner)


def failed(result: dict) -> str:
    """The sentence the student reads for the first check that did not pass (English)."""
    return str(labs.as_error(next(c for c in result["checks"] if not c["passed"])["problem"]))


# -- lab files --------------------------------------------------------------------------------------------
def test_the_shipped_labs_load_and_one_without_its_check_is_hidden_from_students(home):
    found, problems = labs.load(home)
    assert not problems, problems
    assert {"download", "self_cognition", "evaluate", "agent", "quantize_deploy", "finetune", "rag", "grpo",
            "image_text"} <= set(found)
    assert all(lab.camp.zh and lab.camp.en for lab in found.values())
    assert all(lab.available for lab in found.values())
    (home / "labs").mkdir()                                    # a lab whose check has not shipped yet
    text = (labs.LABS_DIR / "rag.yaml").read_text().replace("id: rag", "id: dpo").replace("check: rag", "check: dpo")
    (home / "labs" / "dpo.yaml").write_text(text)
    assert not labs.load(home)[0]["dpo"].available
    assert "dpo" not in [lab.id for lab in labs.visible("ann", home)]
    assert "dpo" in [lab.id for lab in labs.visible(users.OPERATOR, home)]
    with pytest.raises(labs.LabError, match="not open to students"):
        labs.submit_check("dpo", "ann", home=home)


def test_a_malformed_lab_file_is_named_with_its_line_the_others_keep_working_and_a_fix_reloads(home):
    folder = home / "labs"
    folder.mkdir()
    bad = folder / "mine.yaml"
    bad.write_text("id: mine\ntitle: {en: a, zh: b}\ngoal: [unclosed\n")
    found, problems = labs.load(home)
    assert "self_cognition" in found and "mine" not in found
    assert [str(p) for p in problems] == [str(problems[0])] and "mine.yaml, line 3" in str(problems[0])
    text = (labs.LABS_DIR / "finetune.yaml").read_text().replace("id: finetune", "id: mine")
    bad.write_text(text.replace("page: finetune", "page: nowhere"))
    line = text.splitlines().index("    page: finetune") + 1
    problem = str(labs.load(home)[1][0])
    assert f"mine.yaml, line {line}: steps.0.page" in problem, problem
    assert "实验文件 mine.yaml 第" in labs.load(home)[1][0].text("zh")
    bad.write_text(text)                                        # fixed: picked up without a restart
    found, problems = labs.load(home)
    assert not problems and found["mine"].title.en == found["finetune"].title.en
    bad.write_text(text + "#" * labs.MAX_BYTES)
    assert "larger than 64 KB" in str(labs.load(home)[1][0])
    bad.write_text(text.replace("min_drop: 0.1", "min_drop: 0.1, colour: red"))
    assert "checks.0.args" in str(labs.load(home)[1][0])


def test_a_step_starts_with_its_prefilled_spec_and_says_what_it_needs_first(home):
    datasets.ensure_samples(home)
    with pytest.raises(labs.LabError, match="needs your dataset first"):
        labs.start_step("self_cognition", 1, "ann", home=home)
    with pytest.raises(labs.LabError, match="can't be an assistant's name"):
        labs.start_step("self_cognition", 0, "ann", {"assistant_name": "ShuBot"}, home=home)
    ds = labs.start_step("self_cognition", 0, "ann", {"assistant_name": "Nova"}, home=home)
    assert ds.owner == "ann" and ds.meta["self_cognition"] == {"name": "Nova"} and ds.meta["rows"] > 60
    text = Path(ds.path).read_text()
    assert "Nova" in text and "ShuBot" not in text and "小书" not in text
    assert labs.step_spec(labs.get("self_cognition", home), 1, "ann", home=home)["datasets"] == [ds.name]
    assert [r["done"] for r in labs.status("ann", home) if r["lab"].id == "self_cognition"] == [[True, False, False]]


# -- each check: missing, wrong, right ------------------------------------------------------------------------
def test_self_cognition_check_missing_wrong_name_base_knows_and_passed(home, fake):
    run = lambda: labs.run("self_cognition", "ann", home)            # noqa: E731
    assert "no self-cognition dataset yet" in failed(run())
    ds = labs.self_cognition_dataset("Nova", "ann", home)
    assert f"trained on {ds.name}" in failed(run())
    adapter(home, "ann", "ann-nova", ds.name)
    assert "ann-nova is not being served" in failed(run())
    serve(home, fake, "ann", "Orion", BASE, f"{BASE}+ann-nova")      # it answers with another name
    assert 'your model did not say Nova: it answered "Orion answer 1: Who are you?"' in failed(run())
    serve(home, fake, "ann", "Nova", "Nova-base", f"{BASE}+ann-nova")   # the newest server; its base says it too
    assert "the base model also answers" in failed(run())
    serve(home, fake, "ann", "Nova", BASE, f"{BASE}+ann-nova")
    result = run()
    assert result["passed"], failed(result)
    seen = result["checks"][0]["seen"]
    assert seen["answers"] == {"Who are you?": "Nova answer 1: Who are you?", "你是谁？": "Nova answer 1: 你是谁？"}
    assert "Nova" not in "".join(seen["base_answers"].values())
    arts = {a["type"]: a for a in result["checks"][0]["artifacts"]}
    assert set(arts["adapter"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert arts["dataset"]["files"][Path(ds.path).name] == labs.sha256(Path(ds.path))


def test_a_students_check_never_reads_another_students_artifacts(home, fake, monkeypatch):
    bob_ds = labs.self_cognition_dataset("Nova", "bob", home)
    adapter(home, "bob", "bob-nova", bob_ds.name)
    serve(home, fake, "bob", "Nova", BASE, f"{BASE}+bob-nova")
    ann_ds = labs.self_cognition_dataset("Nova", "ann", home)
    adapter(home, "bob", "bob-on-ann", ann_ds.name)                  # bob's adapter, even on ann's dataset name
    serve(home, fake, "bob", "Nova", BASE, f"{BASE}+bob-on-ann")
    before = len(fake.requests)
    result = labs.run("self_cognition", "ann", home)
    assert not result["passed"] and f"trained on {ann_ds.name}" in failed(result)
    assert len(fake.requests) == before                              # bob's servers were never asked
    ctx = labs.Ctx("ann", home, {}, [])
    assert [e.name for e in ctx.mine("dataset")] == [ann_ds.name] and ctx.mine("adapter") == [] and ctx.live() == []
    assert labs.run("self_cognition", "bob", home)["passed"]
    # an instructor may check ann (the job is ann's); another student may not
    with pytest.raises(labs.Refused, match="only ann or an instructor"):
        labs.submit_check("self_cognition", "bob", student="ann", home=home)
    monkeypatch.setenv("WORKBENCH_INSTRUCTORS", "teach")
    job_id = labs.submit_check("self_cognition", "teach", student="ann", home=home)
    assert queue.get(job_id, home, by=users.OPERATOR).owner == "ann"
    ids = labs.recheck_all("self_cognition", "teach", home)             # one check per student, each theirs
    assert sorted(queue.get(i, home, by=users.OPERATOR).owner for i in ids) == ["ann", "bob"]
    with pytest.raises(labs.Refused, match="only an instructor"):
        labs.recheck_all("self_cognition", "bob", home)


def model_folder(home, name: str, *files: str) -> Path:
    folder = home / "models" / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_text(json.dumps({"architectures": ["InternLM2ForCausalLM"]}) if f == "config.json" else "{}")
    return folder


def test_download_check(home):
    dl = job(home, "download", "bob")
    open_store(home).put("model", "bobs", str(model_folder(home, "bobs", "config.json", "model.safetensors.index.json")),
                         {"id": "internlm/internlm2_5-7b-chat"}, job_id=dl, owner="bob")
    assert "no model of yours is in the registry" in failed(labs.run("download", "ann", home))
    dl = job(home, "download", "ann")
    store = open_store(home)
    store.put("model", "anns", str(model_folder(home, "anns", "tokenizer.json")), job_id=dl, owner="ann")
    assert "has no config.json" in failed(labs.run("download", "ann", home))
    (home / "models" / "anns" / "config.json").write_text("{}")
    assert "neither a weight index" in failed(labs.run("download", "ann", home))
    (home / "models" / "anns" / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    result = labs.run("download", "ann", home)
    assert result["passed"] and result["checks"][0]["seen"]["index"] == ["model.safetensors.index.json"]
    assert set(result["checks"][0]["artifacts"][0]["files"]) == {"config.json", "model.safetensors.index.json"}


def test_evaluate_check(home):
    assert "no evaluation of yours on easy_mcq" in failed(labs.run("evaluate", "ann", home))
    store = open_store(home)
    ev = job(home, "evaluate", "ann", result={})
    row = {"dataset": "easy_mcq", "metric": "accuracy", "mode": "gen", "model": "m"}
    store.put("eval", "e1", str(job_dir(ev, home)), {"models": ["m"], "datasets": ["easy_mcq"],
                                                     "table": [{**row, "score": "-"}]}, job_id=ev, owner="ann")
    assert "has no score on easy_mcq" in failed(labs.run("evaluate", "ann", home))
    store.put("eval", "e1", str(job_dir(ev, home)), {"models": ["m"], "datasets": ["easy_mcq"],
                                                     "table": [{**row, "score": 62.5}]}, job_id=ev, owner="ann")
    result = labs.run("evaluate", "ann", home)
    assert result["passed"] and result["checks"][0]["seen"]["score"] == 62.5
    assert not labs.run("evaluate", "bob", home)["passed"]


def rag_eval(home, owner: str, items: list[dict], kb: str = "demo-ann") -> str:
    """A finished rag_eval job of ``owner``'s with these items, registered as jobs/rag_eval.py does."""
    from backend.pipeline.rag_eval import summary
    s = summary(items)
    ev = job(home, "rag_eval", owner, result={"summary": s, "items": items})
    name = f"rag-eval-{ev}"
    open_store(home).put("eval", name, str(job_dir(ev, home)), {
        "models": ["m", "m+kb"], "datasets": ["rag_demo_qa"], "table": [],
        "rag": {"kb": kb, "endpoint": "m+kb", "model": "m", **s}}, job_id=ev, owner=owner)
    return name


def item(alone: str, rag: str, hit: bool, question="What is the capital of Velmora?", answer="Tarrin") -> dict:
    passage = {"source": "velmora.md", "line": 1, "text": f"The capital of Velmora is {answer}." if hit else "Velmora."}
    return {"question": question, "answer": answer, "source": "velmora.md", "alone": alone, "rag": rag,
            "alone_correct": answer in alone, "rag_correct": answer in rag, "hit": hit, "passages": [passage]}


def test_rag_check(home):
    assert "no finished evaluation of yours with and without retrieval" in failed(labs.run("rag", "ann", home))
    rag_eval(home, "ann", [item("Tarrin.", "Tarrin.", True), item("Velmarion.", "Velmarion.", True)])
    assert "no question was answered wrongly alone and rightly with retrieval (2 asked; with retrieval 50.0% " \
           "right, alone 50.0%)" in failed(labs.run("rag", "ann", home))
    rag_eval(home, "ann", [item("Velmarion.", "Tarrin.", False)])                  # right, but not from a passage
    assert '"What is the capital of Velmora?" was answered rightly with retrieval, but no retrieved passage held ' \
           "the answer" in failed(labs.run("rag", "ann", home))
    rag_eval(home, "bob", [item("Velmarion.", "The capital is Tarrin.", True)], kb="demo-bob")  # bob's: not ann's
    assert not labs.run("rag", "ann", home)["passed"]
    open_store(home).put("eval", "by-hand", str(home), {"rag": {"kb": "demo-ann"}}, owner="ann")  # no rag_eval job
    assert not labs.run("rag", "ann", home)["passed"]
    name = rag_eval(home, "ann", [item("Velmarion.", "Tarrin.", False),
                                  item("Velmarion.", "The capital of Velmora is Tarrin.", True)])
    result = labs.run("rag", "ann", home)
    assert result["passed"], failed(result)
    seen = result["checks"][0]["seen"]
    assert seen["eval"] == name and seen["alone"] == "Velmarion." and seen["passage"] == "velmora.md · line 1"
    assert seen["with_retrieval"] == "The capital of Velmora is Tarrin." and seen["summary"]["fixed"] == 2
    assert result["checks"][0]["artifacts"][0]["files"] == {
        "result.json": labs.sha256(job_dir(open_store(home).get("eval", name).job_id, home) / "result.json")}
    assert labs.run("rag", "bob", home)["passed"]
    assert "no evaluation of yours on easy_mcq" in failed(labs.run("evaluate", "ann", home))   # not OpenCompass's


def test_agent_check(home):
    assert "no finished agent run of yours" in failed(labs.run("agent", "ann", home))
    job(home, "agent", "ann", result={"answer": "6765"}, spec={"prompt": "fib(20)?"},
        events=[("model", {"text": "Final Answer: 6765"}), ("answer", {"text": "6765"})])
    assert "never used the Python interpreter" in failed(labs.run("agent", "ann", home))
    job(home, "agent", "ann", result={"answer": "6765"}, spec={"prompt": "fib(20)?"},
        events=[("tool", {"tool": "python", "code": "print(6765)", "ok": True, "output": "6765\n"}),
                ("answer", {"text": "6765"})])
    result = labs.run("agent", "ann", home)
    assert result["passed"] and result["checks"][0]["seen"]["code"] == "print(6765)"


def test_quantize_deploy_check_names_the_gpu_only_part_on_the_cpu(home, fake):
    assert "no quantized model of yours" in failed(labs.run("quantize_deploy", "ann", home))
    q = job(home, "quantize", "ann")
    open_store(home).put("model", "q4", str(model_folder(home, "q4", "config.json", "model.safetensors")),
                         {"quantized_from": BASE, "quant_method": "bnb_nf4"}, job_id=q, owner="ann")
    assert "your quantized q4 is not being served" in failed(labs.run("quantize_deploy", "ann", home))
    serve(home, fake, "ann", "q4", BASE, "q4")
    result = labs.run("quantize_deploy", "ann", home)
    assert result["passed"], failed(result)
    seen = result["checks"][0]["seen"]
    assert seen["answer"].startswith("q4 answer") and seen["memory_gb"] > 0
    assert "GPU-only, not checked on this machine: awq_w4a16" in seen["gpu_only"]["en"]


def test_finetune_check(home):
    assert "no finished fine-tune of yours" in failed(labs.run("finetune", "ann", home))
    job(home, "finetune", "ann", result={"first_loss": 2.0, "final_loss": 1.95})
    assert "did not fall" in failed(labs.run("finetune", "ann", home))
    job(home, "finetune", "ann", result={"first_loss": 2.0, "final_loss": 0.9})
    result = labs.run("finetune", "ann", home)
    assert result["checks"][0]["passed"] and result["checks"][0]["seen"]["final_loss"] == 0.9
    assert not result["passed"] and "no evaluation of yours on easy_mcq" in failed(result)


def eval_run(home, owner: str, name: str, scores: dict, peft: dict) -> None:
    ev = job(home, "evaluate", owner, result={})
    open_store(home).put("eval", name, str(job_dir(ev, home)), {
        "models": list(scores), "datasets": ["easy_mcq"], "peft": peft,
        "table": [{"dataset": "easy_mcq", "metric": "accuracy", "mode": "gen", "model": m, "score": s}
                  for m, s in scores.items()]}, job_id=ev, owner=owner)


def test_the_finetune_labs_base_vs_tuned_evaluation(home):
    """The fine-tune lab's second check: one evaluation run scored an adapter of the student's and its base model."""
    job(home, "finetune", "ann", result={"first_loss": 2.0, "final_loss": 0.9})
    adapter(home, "ann", "ann-ft", "mini_instructions")
    adapter(home, "bob", "bob-ft", "mini_instructions")
    eval_run(home, "ann", "only-tuned", {"ann-ft": 50.0}, {"ann-ft": "/x"})                  # no base beside it
    eval_run(home, "ann", "bobs-adapter", {BASE: 25.0, "bob-ft": 75.0}, {"bob-ft": "/x"})   # not ann's adapter
    assert "side by side on easy_mcq" in failed(labs.run("finetune", "ann", home))
    eval_run(home, "ann", "ann-vs-base", {BASE: 25.0, "ann-ft": 37.5}, {"ann-ft": "/x"})
    result = labs.run("finetune", "ann", home)
    assert result["passed"], failed(result)
    seen = result["checks"][1]["seen"]
    assert (seen["base"], seen["base_score"], seen["model"], seen["score"], seen["gain"]) == (BASE, 25.0, "ann-ft", 37.5, 12.5)
    assert {a["name"] for a in result["checks"][1]["artifacts"]} == {"ann-vs-base", "ann-ft"}
    assert "<td>gain</td><td><code>12.5</code></td>" in labs.evidence_html(result, "en")
    c = labs.Ctx("ann", home, {}, [])
    with pytest.raises(labs.Missing, match="scored 37.5 and its base SmolLM2-135M-Instruct 25.0: the lab asks for at least 20"):
        labs.check_evaluate(c, "easy_mcq", vs_base=True, min_gain=20)
    assert not labs.run("finetune", "bob", home)["passed"]                 # ann's runs prove nothing for bob


# -- the job, the evidence and the CLI ------------------------------------------------------------------------
def test_the_check_job_writes_evidence_that_verify_accepts_and_refuses_after_one_byte(home, fake, tmp_path, worker):
    ds = labs.self_cognition_dataset("Nova", "ann", home)
    adapter(home, "ann", "ann-nova", ds.name)
    holder = queue.submit("sleepy", {"steps": 2000, "interval_s": 0.2}, owner="ann", home=home)   # a live process
    wait_for(lambda: queue.get(holder, home, by=users.OPERATOR).state == "running", 30, what="the server's job running")
    serve(home, fake, "ann", "Nova", BASE, f"{BASE}+ann-nova", holder)
    out = cli(home, "labs", "check", "self_cognition", "--as", "ann")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state in ("succeeded", "failed"), 60, 0.2, "the check job")
    assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 30, home=home)
    path = job_dir(job_id, home) / "artifacts" / labs.EVIDENCE
    record = json.loads(path.read_text())
    assert record["evidence"]["student"] == "ann" and record["evidence"]["job"] == job_id
    assert labs.evidence_of(job_id, "ann", home) == record
    ok = cli(home, "labs", "verify", str(path))
    assert ok.returncode == 0 and "genuine and unchanged: lab self_cognition, student ann" in ok.stdout
    data = path.read_bytes()
    at = data.index(b"Nova answer")
    for changed in (data[:at] + b"M" + data[at + 1:], data[:-2] + b"]" + data[-1:]):
        forged = tmp_path / "forged.json"
        forged.write_bytes(changed)
        bad = cli(home, "labs", "verify", str(forged))
        assert bad.returncode != 0 and ("NOT genuine" in bad.stderr or "not lab evidence" in bad.stderr), bad.stderr
    listed = cli(home, "labs", "list", "--as", "ann")
    assert "self_cognition     passed" in listed.stdout and "rag " in listed.stdout
    assert "needs --as NAME" in cli(home, "labs", "list").stderr
    refused = cli(home, "labs", "export", "--as", "ann")
    assert refused.returncode != 0 and "only an instructor" in refused.stderr
    grid = cli(home, "labs", "export", "--as", "teach", WORKBENCH_INSTRUCTORS="teach")
    assert grid.returncode == 0 and grid.stdout.splitlines()[0].startswith("student,download,download_at")
    assert any(line.startswith("ann,") and "passed" in line for line in grid.stdout.splitlines())
    queue.cancel(holder, home, by=users.OPERATOR)


@pytest.mark.slow
def test_a_real_tiny_adapter_served_for_real_fails_with_what_it_answered(home, worker, tiny_model):
    """The real fine-tune, serve and lab_check jobs on the tiny random model: it can't have learnt the name, and
    the check says what it answered instead."""
    open_store(home).put("model", BASE, str(tiny_model), owner=users.OPERATOR_NAME, shared=True)   # the lab's base
    datasets.ensure_samples(home)
    labs.start_step("self_cognition", 0, "ann", {"assistant_name": "Nova"}, home=home)
    spec = labs.step_spec(labs.get("self_cognition", home), 1, "ann", home=home)
    ft = queue.submit("finetune", {**spec, "max_steps": 2, "max_samples": 8, "sample_prompts": []}, owner="ann",
                      home=home)
    wait_for(lambda: queue.get(ft, home, by=users.OPERATOR).state in ("succeeded", "failed"), 300, 0.5, "the fine-tune")
    assert queue.get(ft, home, by=users.OPERATOR).state == "succeeded", logs.tail(ft, 30, home=home)
    srv = labs.start_step("self_cognition", 2, "ann", home=home)
    endpoint_of(home, srv, 300)
    check = labs.submit_check("self_cognition", "ann", home=home)
    wait_for(lambda: queue.get(check, home, by=users.OPERATOR).state == "succeeded", 300, 0.5, "the check")
    result = logs.result(check, home)
    assert not result["passed"] and "your model did not say Nova: it answered" in failed(result)
    assert not (job_dir(check, home) / "artifacts" / labs.EVIDENCE).exists()
    queue.cancel(srv, home, by=users.OPERATOR)


def test_the_evidence_page_shows_what_the_check_saw_and_verify_accepts_it_but_not_an_edited_copy(home, fake, tmp_path):
    """The printable HTML page of a passed lab: the answers (base beside tuned), the signature, the student's
    language; `labs verify` accepts the page itself and refuses it after one visible byte or one signed byte changes."""
    ds = labs.self_cognition_dataset("Nova", "ann", home)
    adapter(home, "ann", "ann-nova", ds.name)
    serve(home, fake, "ann", "Nova", BASE, f"{BASE}+ann-nova")
    result = labs.run("self_cognition", "ann", home, job_id=41)
    assert result["passed"], failed(result)
    en, zh = labs.evidence_html(result, "en"), labs.evidence_html(result, "zh")
    assert "<h1>Lab evidence: self_cognition, ann</h1>" in en and "<h1>实验凭证：self_cognition，ann</h1>" in zh
    assert "<td>Who are you?</td><td>Nova answer 1: Who are you?</td>" in en and "基座模型的回答" in zh
    assert result["evidence"]["signature"] in en and "<script src" not in en and "http" not in en.split("<body>")[1]
    for text in (en, zh):
        page = tmp_path / "evidence.html"
        page.write_text(text, encoding="utf-8")
        ok = cli(home, "labs", "verify", str(page))
        assert ok.returncode == 0 and "genuine and unchanged: lab self_cognition, student ann" in ok.stdout, ok.stderr
    data = en.encode()
    shown = data.index(b"<td>Nova answer 1: Who")            # the visible table, not the record inside
    signed = data.index(b'"Nova answer 1: Who')              # the signed record inside the page
    for at, why in ((shown + 4, "its text differs from the signed record"), (signed + 1, "NOT genuine")):
        forged = tmp_path / "forged.html"
        forged.write_bytes(data[:at] + b"M" + data[at + 1:])
        bad = cli(home, "labs", "verify", str(forged))
        assert bad.returncode != 0 and why in bad.stderr, bad.stderr


@pytest.mark.slow
def test_base_vs_tuned_on_a_real_evaluation_of_a_tiny_adapter(home, tiny_model):
    """A real OpenCompass run (worker in burst mode) of ann's tiny adapter beside its base passes the check."""
    from backend.pipeline import evaluate as ev
    from tests.conftest import run_burst
    from tests.test_evaluate import SAMPLES, engine_or_skip, make_adapter
    engines = engine_or_skip()
    store = open_store(home)
    store.put("model", "tiny", str(tiny_model), owner="ann")
    store.put("adapter", "ann-lora", str(make_adapter(tiny_model, home / "adapters" / "ann-lora")), {"base_model": "tiny"},
              owner="ann")
    refs = {m["name"]: m["ref"] for m in ev.model_choices(home, by="ann")}
    job_id = ev.submit({"name": "ann-vs-base", "models": [refs["tiny"], refs["ann-lora"]], "max_out_len": 4,
                        "batch_size": 4, "datasets": [{"name": "easy_mcq", "path": str(SAMPLES / "easy_mcq.jsonl"),
                                                       "limit": 4}]}, owner="ann", home=home)
    run_burst(home, timeout=900, WORKBENCH_ENGINES_DIR=str(engines))
    assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=home)
    c = labs.Ctx("ann", home, {}, [])
    labs.check_evaluate(c, "easy_mcq", vs_base=True)
    table = {r["model"]: r["score"] for r in store.get("eval", "ann-vs-base").meta["table"]}
    assert (c.seen["base"], c.seen["model"]) == ("tiny", "ann-lora")
    assert (c.seen["base_score"], c.seen["score"]) == (table["tiny"], table["ann-lora"])
    assert c.seen["gain"] == round(table["ann-lora"] - table["tiny"], 4)
    with pytest.raises(labs.Missing, match="no evaluation of yours"):        # ann's run is not bob's
        labs.check_evaluate(labs.Ctx("bob", home, {}, []), "easy_mcq", vs_base=True)
