"""Push: real push jobs through a real worker upload with huggingface_hub's and modelscope's own clients to the
local hub (tests/hubserver.py on 127.0.0.1): the files arrive, the card's metadata carries the lineage, a wrong token,
a name taken and a full quota fail with a sentence, the token is written nowhere, a cancelled push is
retried, and a student cannot push another student's adapter."""
from __future__ import annotations

import pytest

from backend.access import users
from backend.core import defaults, errors
from backend.pipeline import push as push_
from backend.runtime import logs, queue
from backend.core.store import open_store
from tests.conftest import run_burst, wait_for
from tests.hubserver import Hub

TOKEN = "hf_ann_secret_token_1234"


@pytest.fixture
def adapter(home, tmp_path):
    """ann's adapter as a fine-tune registers it (files, base model, datasets, spec, metrics) and an evaluation
    of it."""
    folder = tmp_path / "ann-id"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "README.md").write_text("peft's own card")
    spec = {"objective": "sft", "method": "lora", "lr": 0.0002, "epochs": 3.0, "lora_r": 8, "seed": 42}
    open_store(home).put("adapter", "ann-id", str(folder), {
        "base_model": "SmolLM2-135M-Instruct", "datasets": ["shubot_self_cognition"], "method": "lora", "spec": spec,
        "metrics": {"steps": 30, "final_loss": 0.42, "eval_loss": None}, "job": 7}, owner="ann")
    open_store(home).put("eval", "eval-9", "", {"models": ["ann-id"], "table": [
        {"dataset": "demo_qa", "metric": "accuracy", "mode": "gen", "model": "ann-id", "score": 61.5}]}, owner="ann")
    return folder


def push(repo_id: str, hub: Hub, token: str = TOKEN, to: str = "huggingface", **kw) -> int:
    return queue.submit("push", {"type": "adapter", "source": "ann-id", "repo_id": repo_id, "endpoint": hub.url,
                                 "hub": to, **kw}, owner="ann", secrets={push_.TOKEN_ENV[to]: token}, home=defaults.home())


@pytest.mark.parametrize("to", ["huggingface", "modelscope"])
def test_push_uploads_the_files_with_a_lineage_card_and_says_why_it_fails(home, adapter, to):
    from huggingface_hub import ModelCard
    with Hub(tokens={TOKEN: "ann", "hf_bob": "bob"}) as hub:
        ok = push("ann/my-adapter", hub, to=to)
        bad = push("ann/other", hub, token="hf_wrong", to=to)
        taken = push("bob/my-adapter", hub, to=to)
        run_burst(home, timeout=300)
        assert queue.get(ok, home, by=users.OPERATOR).state == "succeeded", logs.tail(ok, 40, home=home)
        repo = hub.repos["ann/my-adapter"]
        assert set(repo.files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        assert (repo.folder / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
        assert hub.private["ann/my-adapter"] is True
        card = ModelCard((repo.folder / "README.md").read_text())
        assert card.data.base_model == "SmolLM2-135M-Instruct" and card.data.datasets == ["shubot_self_cognition"]
        assert card.data.library_name == "peft" and "lab-workbench" in card.data.tags
        wb = card.data.to_dict()["workbench"]
        assert wb["lineage"]["method"] == "lora" and wb["hyperparameters"]["lr"] == 0.0002
        assert wb["metrics"] == {"steps": 30, "final_loss": 0.42}
        assert wb["evaluations"][0]["score"] == 61.5 and wb["evaluations"][0]["dataset"] == "demo_qa"
        assert logs.result(ok, home)["url"].endswith("/ann/my-adapter")

        for job_id, sentence in ((bad, f"{to} refused the token"), (taken, "belongs to someone else")):
            job = queue.get(job_id, home, by=users.OPERATOR)
            assert job.state == "failed" and sentence in job.error_message, job.error_message
            assert "Traceback" not in logs.tail(job_id, 40, home=home)
        zh = errors.job_message(logs.result(bad, home), "zh")        # the job's sentence, keyed: in the reader's language
        assert zh == f"{to} 拒绝了该令牌：请确认令牌属于你、未过期且有写权限"
        hub.quota = 1000
        full = push("ann/big", hub, to=to)
        run_burst(home, timeout=300)
        if to == "huggingface":
            assert "storage quota is full" in queue.get(full, home, by=users.OPERATOR).error_message
        else:        # modelscope's upload_folder logs each file's refusal and raises one summary
            assert queue.get(full, home, by=users.OPERATOR).state == "failed" and "Storage quota exceeded" in logs.tail(full, 60, home=home)
    # the token is in no spec, row, log or event of any job, nor left in a job folder
    written = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert TOKEN.encode() not in written


def test_a_cancelled_push_can_be_retried(home, adapter, worker):
    with Hub(tokens={TOKEN: "ann"}) as hub:
        hub.gate.clear()                       # the push waits in its preupload until we let it go
        job_id = push("ann/retried", hub)
        wait_for(lambda: any("/preupload/" in r for r in hub.requests), 120, what="the push to reach the upload")
        queue.cancel(job_id, home=home, by=users.OPERATOR)
        wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 60, what="the cancel")
        hub.gate.set()
        assert "README.md" not in hub.repos["ann/retried"].files           # one commit: nothing half-pushed
        again = queue.retry(job_id, secrets={"HF_TOKEN": TOKEN}, home=home, by=users.OPERATOR)
        wait_for(lambda: queue.get(again, home, by=users.OPERATOR).state in ("succeeded", "failed"), 120, what="the retried push")
        assert queue.get(again, home, by=users.OPERATOR).state == "succeeded", logs.tail(again, 40, home=home)
        assert {"adapter_model.safetensors", "README.md"} <= set(hub.repos["ann/retried"].files)


def test_a_student_cannot_push_another_students_adapter(home, adapter, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTH", "accounts")
    users.add("ann", home=home)
    users.add("bob", home=home)
    with pytest.raises(queue.Refused, match="another student's"):
        queue.submit("push", {"type": "adapter", "source": "ann-id", "repo_id": "bob/stolen"}, owner="bob",
                     secrets={"HF_TOKEN": "hf_bob"}, home=home)
    assert not open_store(home).jobs()


@pytest.fixture
def hf_hub(monkeypatch):
    """A local hub the worker's jobs reach as $HF_ENDPOINT (set before the app and the worker start)."""
    with Hub(tokens={TOKEN: "local"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.mark.browser
def test_push_a_model_from_the_models_page(hf_hub, home, tiny_model, page):
    from tests.conftest import shot
    open_store(home).put("model", "tiny", str(tiny_model), {"source": "local"}, owner="local")
    page.goto(page.base_url + "/models")
    page.get_by_text("Push to Hugging Face / ModelScope").click()
    page.locator(".st-key-models_push_repo_tiny input").fill("local/tiny-pushed")
    page.locator(".st-key-models_push_token input").fill(TOKEN)
    page.get_by_role("button", name="Push", exact=True).click()
    page.get_by_text("Queued as job").wait_for()
    page.locator("[data-testid='job-state'][data-state='succeeded']").wait_for(state="attached", timeout=120_000)
    shot(page, "models-push")
    files = hf_hub.repos["local/tiny-pushed"].files
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    assert TOKEN not in (home / "jobs" / "1" / "run.log").read_text()
