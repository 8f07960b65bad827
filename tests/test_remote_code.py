"""Code from models runs only by explicit opt-in: a model whose remote code writes a marker file is
refused at submit without the opt-in, and no job kind runs that code when the opt-in is taken back while
its jobs wait (the loaders pass the registry's opt-in, not their own default)."""
from __future__ import annotations

import json
import subprocess

import pytest

from backend.access import users
from backend.pipeline import chat
from backend.runtime import logs, queue
from backend.workspace import models, remote_code
from backend.core.errors import UserError
from backend.core.store import open_store
from tests.conftest import ENGINES_DIR, ROOT, env_for, run_burst, wait_for
from tests.fixtures.remote_code_model import make_remote_code_model
from tests.hubserver import Hub

ROWS = [{"messages": [{"role": "user", "content": f"Hello, who are you? {i}"},
                      {"role": "assistant", "content": "I am a helpful assistant."}]} for i in range(8)]


@pytest.fixture
def remote(home, tiny_model, tmp_path):
    """(registered remote-code model folder, marker path); a dataset ``chat`` beside it."""
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = make_remote_code_model(tiny_model, tmp_path / "remote-llama", marker)
    models.register("remote", folder, "test", home=home, owner="local")
    (home / "datasets").mkdir(exist_ok=True)
    (home / "datasets" / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder, marker


def opt_in(allowed: bool, home) -> None:
    models.set_trust_remote_code("remote", allowed, home, by=users.OPERATOR)


def submit_all(home, folder) -> dict[str, dict]:
    finetune = {"base_model": "remote", "datasets": ["chat.jsonl"], "max_length": 64, "batch_size": 2,
                "epochs": 1, "gradient_checkpointing": False, "name": "remote-lora"}
    return {"finetune": finetune, "serve": {"model": "remote"}, "dataset_stats": {"dataset": "chat.jsonl", "model": "remote"},
            "evaluate": {"models": [{"name": "remote", "path": str(folder)}],
                         "datasets": [{"name": "qa", "path": str(home / "qa.jsonl")}]},
            "vlm": {"model": "remote"}}


def test_a_model_with_its_own_code_is_refused_at_submit_without_the_opt_in(home, remote):
    folder, _ = remote
    (home / "qa.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    for kind, spec in submit_all(home, folder).items():
        with pytest.raises(queue.SubmitError, match="needs its own remote code.*trust_remote_code opt-in"):
            queue.submit(kind, spec, home=home, owner="local")
    open_store(home).put("adapter", "remote-lora", str(folder), {"base_model": "remote"}, owner="local")
    with pytest.raises(queue.SubmitError, match="trust_remote_code opt-in"):
        queue.submit("merge", {"adapter": "remote-lora"}, home=home, owner="local")
    assert queue.list_jobs(home=home, by=users.OPERATOR) == []


CHANGED = "the code of model remote changed since its trust_remote_code opt-in was given"


def test_the_opt_in_is_bound_to_the_code_files_and_configs_that_name_auto_map(home, remote):
    folder, _ = remote
    before = remote_code.code_hash(folder)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())     # weights: not code
    (folder / "README.md").write_text("notes")
    assert remote_code.code_hash(folder) == before
    for change in (lambda: (folder / "sub").mkdir() or (folder / "sub" / "helper.py").write_text("x = 1"),
                   lambda: (folder / "config.json").write_text((folder / "config.json").read_text() + " "),
                   lambda: (folder / "marker_code.py").write_text("print('other code')")):
        opt_in(True, home)
        assert remote_code.refusal({"model": "remote"}, home) is None and remote_code.trust(folder, home) is True
        change()
        why = remote_code.refusal({"model": "remote"}, home)
        assert why is not None and why.key == "err.model.code_changed"
        with pytest.raises(UserError, match=CHANGED):
            remote_code.trust(folder, home)
    opt_in(False, home)
    assert remote_code.trust(folder, home) is False


def test_code_swapped_in_after_the_opt_in_is_refused_at_load(home, remote, tmp_path):
    """The opt-in was given, the job queued; then a file is swapped in the folder: the job refuses to load it."""
    folder, marker = remote
    opt_in(True, home)
    job = queue.submit("dataset_stats", {"dataset": "chat.jsonl", "model": "remote"}, home=home, owner="local")
    other = tmp_path / "OTHER_CODE_RAN"
    (folder / "marker_code.py").write_text((folder / "marker_code.py").read_text().replace(str(marker), str(other)))
    run_burst(home)
    row = queue.get(job, home, by=users.OPERATOR)
    assert row.state == "failed" and CHANGED in row.error_message, (row, logs.tail(job, 30, home=home))
    assert "Traceback" not in logs.tail(job, 30, home=home)
    assert not marker.exists() and not other.exists()
    with pytest.raises(queue.SubmitError, match=CHANGED):
        queue.submit("dataset_stats", {"dataset": "chat.jsonl", "model": "remote"}, home=home, owner="local")
    opt_in(True, home)                       # looked at again: the opt-in for the new code
    again = queue.submit("dataset_stats", {"dataset": "chat.jsonl", "model": "remote"}, home=home, owner="local")
    run_burst(home)
    assert queue.get(again, home, by=users.OPERATOR).state == "succeeded" and other.exists()


def test_a_re_download_fills_a_new_folder_swaps_it_in_whole_and_new_code_voids_the_opt_in(home, tiny_model, tmp_path):
    v1 = make_remote_code_model(tiny_model, tmp_path / "v1", tmp_path / "RAN1")
    with Hub({"x/remote": v1}) as hub:
        spec = {"source": "huggingface", "repo_id": "x/remote", "name": "remote", "endpoint": hub.url}
        first = queue.submit("download", spec, home=home, owner="local")
        run_burst(home)
        assert queue.get(first, home, by=users.OPERATOR).state == "succeeded", logs.tail(first, 30, home=home)
        folder = home / "models" / "remote"
        opt_in(True, home)
        assert remote_code.refusal({"model": "remote"}, home) is None
        same = queue.submit("download", spec, home=home, owner="local")     # the same code again: the opt-in holds
        run_burst(home)
        assert queue.get(same, home, by=users.OPERATOR).state == "succeeded", logs.tail(same, 30, home=home)
        assert remote_code.refusal({"model": "remote"}, home) is None
        assert models.get("remote", home).meta["trust_remote_code"] is True
        v2 = make_remote_code_model(tiny_model, tmp_path / "v2", tmp_path / "RAN22")       # other code, same weights
        hub.add("x/remote", v2)
        hub.truncate["marker_code.py"] = 40                  # the first try arrives cut short
        again = queue.submit("download", spec, home=home, owner="local")
        run_burst(home)
        assert queue.get(again, home, by=users.OPERATOR).state == "failed"
        # nothing of the unfinished download is under the registered model: its code, its opt-in hold
        assert (folder / "marker_code.py").read_text() == (v1 / "marker_code.py").read_text()
        assert not [p for p in folder.rglob("*") if p.name.endswith(".incomplete")]
        assert remote_code.refusal({"model": "remote"}, home) is None
        assert (home / "models" / ".incoming-remote" / "model.safetensors").is_file()     # kept for the retry
        hub.truncate.clear()
        retry = queue.retry(again, home=home, by=users.OPERATOR)
        run_burst(home)
        assert queue.get(retry, home, by=users.OPERATOR).state == "succeeded", logs.tail(retry, 30, home=home)
    assert (folder / "marker_code.py").read_text() == (v2 / "marker_code.py").read_text()
    assert not (home / "models" / ".incoming-remote").exists()
    assert models.get("remote", home).path == str(folder.resolve())
    with pytest.raises(queue.SubmitError, match=CHANGED):
        queue.submit("dataset_stats", {"dataset": "chat.jsonl", "model": "remote"}, home=home, owner="local")


def test_evaluate_config_passes_the_opt_in_to_opencompass(home, remote, tmp_path):
    """OpenCompass's HuggingFacewithChatTemplate trusts remote code unless told: build its model from the
    generated config in the opencompass engine and see whether the marker appears."""
    from jobs import evaluate as ev
    folder, marker = remote
    (home / "qa.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    spec = ev.Spec.model_validate(submit_all(home, folder)["evaluate"])
    config = ev.write_config(spec, tmp_path / "config.py", None)
    text = config.read_text()
    assert "'tokenizer_kwargs': {'trust_remote_code': False}" in text and "'trust_remote_code': False, " in text
    python = ENGINES_DIR / "opencompass" / "bin" / "python"
    if not (ENGINES_DIR / "opencompass" / ".installed").exists():
        return
    build = ("import sys; from mmengine.config import Config; from opencompass.utils import build_model_from_cfg;"
             "build_model_from_cfg(Config.fromfile(sys.argv[1]).models[0]); print('built')")
    out = subprocess.run([str(python), "-c", build, str(config)], cwd=ROOT, env=env_for(home, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=300)
    assert "built" in out.stdout, out.stderr[-3000:]
    assert not marker.exists(), "OpenCompass ran the model's code without the opt-in"
    opt_in(True, home)                      # the positive control: with the opt-in, the code runs
    config = ev.write_config(spec, tmp_path / "config.py", None)
    subprocess.run([str(python), "-c", build, str(config)], cwd=ROOT, env=env_for(home, HF_HUB_OFFLINE="1"),
                   capture_output=True, text=True, timeout=300)
    assert marker.exists()


@pytest.mark.slow
def test_no_job_kind_runs_the_models_code_when_the_opt_in_is_taken_back(home, remote):
    folder, marker = remote
    specs = submit_all(home, folder)
    opt_in(True, home)
    stats = queue.submit("dataset_stats", specs["dataset_stats"], home=home, owner="local")
    tune = queue.submit("finetune", specs["finetune"], home=home, owner="local")
    opt_in(False, home)                      # taken back while the jobs wait
    run_burst(home, timeout=300)
    for job_id in (stats, tune):
        assert queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 30, home=home)
    opt_in(True, home)
    merge = queue.submit("merge", {"adapter": "remote-lora"}, home=home, owner="local")
    serve = queue.submit("serve", specs["serve"], home=home, owner="local")
    opt_in(False, home)
    from tests.conftest import start_worker, stop
    w = start_worker(home)
    try:
        wait_for(lambda: queue.get(merge, home, by=users.OPERATOR).state == "succeeded", 120, 0.2, "the merge")
        job = queue.get(serve, home, by=users.OPERATOR)
        # the server refuses to start a model with its own code without the opt-in
        wait_for(lambda: queue.get(serve, home, by=users.OPERATOR).state == "failed", 120, 0.2, "serve to refuse")
        assert "trust_remote_code opt-in" in queue.get(serve, home, by=users.OPERATOR).error_message, job
    finally:
        stop(w)
    assert not marker.exists(), "a job ran the model's code without the opt-in"
    assert chat.endpoints(home, by=users.OPERATOR) == []
    opt_in(True, home)                       # the positive control: with the opt-in, its code does run
    again = queue.submit("dataset_stats", specs["dataset_stats"], home=home, owner="local")
    run_burst(home)
    assert queue.get(again, home, by=users.OPERATOR).state == "succeeded" and marker.exists()
