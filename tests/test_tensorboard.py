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
from tests.conftest import PY, ROOT, env_for, free_port, run_burst, shot, stop, wait_for
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


# -- W&B and SwanLab, offline ------------------------------------------------------------------------
def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB log (7-byte ':W&B' header, 32 KiB blocks,
    records of crc32 + length + type, FIRST/MIDDLE/LAST chunks joined) of wandb_internal_pb2.Record."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb
    data, i, rows, chunk = run_file.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while i + 7 <= len(data):
        if 32768 - i % 32768 < 7:                               # block tail too short for a header: padding
            i += 32768 - i % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[i:i + 7])
        chunk, i = chunk + data[i + 7:i + 7 + n], i + 7 + n
        if kind in (1, 4):                                      # FULL or LAST: one record is complete
            rec = pb.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
    return rows


def swanlab_scalars(run_file) -> list[tuple[str, int, float]]:
    """(key, step, value) of every scalar in an offline SwanLab run file, read by SwanLab's own reader."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader
    reader = DataStoreReader()
    reader.open(run_file)
    out = []
    for raw in reader:
        rec = Record()
        rec.ParseFromString(raw)
        if rec.HasField("scalar"):
            out.append((rec.scalar.key, rec.scalar.step, rec.scalar.value.number))
    return out


@pytest.mark.browser
def test_finetune_writes_offline_wandb_and_swanlab_runs_with_its_metrics(ws, page):
    job_id = queue.submit("finetune", spec(max_steps=3, eval_ratio=0.1, name="tiny-trk", trackers=["wandb", "swanlab"]),
                          owner="local", home=ws)
    wait_for(lambda: queue.get(job_id, ws, by=users.OPERATOR).state.finished, 300, 0.5, "the run (the app's worker)")
    assert queue.get(job_id, ws, by=users.OPERATOR).state == "succeeded", logs.tail(job_id, 40, home=ws)
    points = metrics(job_id, ws)
    folder = paths.job_dir(job_id, ws)
    names = ("loss", "lr", "grad_norm", "tokens_per_s", "eval_loss")

    [run_file] = (folder / defaults.TRACKER_DIRS["wandb"] / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    for name in names:
        ours = [(p["step"], p[name]) for p in points if name in p]
        theirs = [(r["_step"], r[name]) for r in rows if name in r]
        assert theirs == ours and ours, name        # the same float64 values

    [run_file] = (folder / defaults.TRACKER_DIRS["swanlab"]).glob("run-*/run-*.swanlab")
    scalars = swanlab_scalars(run_file)
    for name in names:
        ours = [(p["step"], p[name]) for p in points if name in p]
        assert [(s, v) for k, s, v in scalars if k == name] == ours and ours, name
    config = next(folder.glob("swanlog/run-*/files/config.yaml")).read_text()
    assert "tiny-trk" in config                                     # the spec is the run's config

    # the job page names both offline runs, with the command that uploads each with the student's own key
    page.set_viewport_size({"width": 1400, "height": 2600})
    page.goto(f"{page.base_url}/jobs?job={job_id}")
    page.get_by_text("Weights & Biases offline run").wait_for(timeout=60_000)
    page.get_by_text("SwanLab offline run").wait_for()
    assert f"swanlab sync {folder / 'swanlog'}/run-*" in page.inner_text("body")
    shot(page, "job-trackers")


def test_an_unknown_tracker_is_refused_at_submit(ws):
    with pytest.raises(queue.SubmitError, match="trackers"):
        queue.submit("finetune", spec(trackers=["mlflow"]), owner="local", home=ws)
