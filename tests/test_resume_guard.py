"""Checkpoints load as data only (torch.load(weights_only=True)), and a fine-tune resumes only from its
owner's own jobs: at submit (resume_from) and in the job (resume: true)."""
from __future__ import annotations

import json

import pytest

from backend.access import users
from backend.pipeline import finetune as ft
from backend.runtime import logs, queue
from backend.core.store import open_store
from tests.conftest import run_burst
from tests.test_finetune import spec, ws  # noqa: F401 - the workspace fixture with the tiny model and a dataset


def fake_checkpoint(home, owner: str, s: dict) -> int:
    """A finished fine-tune job of ``owner`` whose checkpoint is junk (loading it fails)."""
    job_id = open_store(home).insert_job("finetune", owner, s, {})
    ck = queue.job_dir(job_id, home) / "checkpoints" / "step-5"
    ck.mkdir(parents=True)
    (ck / "state.json").write_text(json.dumps({"spec": s, "step": 5}))
    return job_id


def test_resume_from_someone_elses_job_is_refused_at_submit(ws):
    theirs = fake_checkpoint(ws, "ann", queue.validate("finetune", spec())[1].model_dump(mode="json"))
    assert ft.checkpoints(theirs, ws)
    with pytest.raises(queue.SubmitError, match=f"job {theirs} belongs to ann: resume only from your own jobs"):
        queue.submit("finetune", spec(resume_from=theirs), owner="bob", home=ws)


@pytest.mark.slow
def test_resume_true_never_picks_another_owners_checkpoint(ws):
    s = spec(epochs=1, resume=True)
    fake_checkpoint(ws, "ann", queue.validate("finetune", s)[1].model_dump(mode="json"))
    mine = queue.submit("finetune", s, owner="bob", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(mine, ws, by=users.OPERATOR).state == "succeeded", logs.tail(mine, 30, home=ws)
    assert "no earlier run with this spec left a checkpoint" in logs.read_log(mine, home=ws)[0]


@pytest.mark.slow
def test_a_checkpoint_cannot_run_code_when_loaded(ws, tmp_path):
    first = queue.submit("finetune", spec(epochs=1, name="mine", save_steps=1), owner="bob", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(first, ws, by=users.OPERATOR).state == "succeeded", logs.tail(first, 30, home=ws)
    marker = tmp_path / "PICKLE_RAN"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    import torch
    torch.save({"optimizer": Evil()}, ft.checkpoints(first, ws)[-1] / "trainer.pt")
    again = queue.submit("finetune", spec(epochs=1, name="mine", save_steps=1, resume_from=first), owner="bob", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(again, ws, by=users.OPERATOR).state == "failed"
    assert not marker.exists(), "loading a checkpoint ran code from it"
