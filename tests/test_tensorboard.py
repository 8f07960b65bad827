"""TensorBoard: a real fine-tune writes event files that TensorBoard's own reader reads back with the
job's curves, and `python -m backend tensorboard` serves them on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from backend.access import users
from backend.core import defaults, paths
from backend.runtime import logs, queue
from tests.conftest import PY, ROOT, env_for, free_port, run_burst, stop, wait_for
from tests.test_finetune import metrics, spec, ws  # noqa: F401 - ws is the fixture: tiny model + identity data


def test_finetune_writes_tensorboard_events_equal_to_its_metrics(ws):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    job_id = queue.submit("finetune", spec(max_steps=4, eval_ratio=0.1, eval_steps=2, name="tiny-tb"), owner="local", home=ws)
    run_burst(ws, timeout=300)
    assert queue.get(job_id, ws, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=ws)
    points = metrics(job_id, ws)
    folder = paths.job_dir(job_id, ws) / defaults.TENSORBOARD_DIR
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"} <= set(acc.Tags()["scalars"])
    for name in ("loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"):
        ours = [(p["step"], p[name]) for p in points if name in p]
        theirs = [(e.step, e.value) for e in acc.Scalars(name)]
        assert [s for s, _ in theirs] == [s for s, _ in ours] and ours
        assert [v for _, v in theirs] == pytest.approx([v for _, v in ours], rel=1e-6)   # float32 in the file

    port = free_port()
    proc = subprocess.Popen([PY, "-m", "backend", "tensorboard", "--port", str(port)], cwd=ROOT, env=env_for(ws),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def runs():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                    return json.load(r)
            except OSError:
                assert proc.poll() is None, "tensorboard exited"
                return None
        assert wait_for(runs, 60, 0.3, "TensorBoard to list the job's run") == [f"{job_id}/{defaults.TENSORBOARD_DIR}"]
    finally:
        stop(proc)
