"""dataset_stats and dataset_import through a real worker (run_burst); import from a local HTTP server."""
from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.access import users
from backend.core import paths
from backend.workspace import datasets as ds
from backend.runtime import logs, queue
from backend.core.store import open_store
from jobs.dataset_import import pick_files, place
from tests.conftest import run_burst


def result(home, job_id):
    return queue.get(job_id, home, by=users.OPERATOR), logs.result(job_id, home)


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over a folder; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stats_with_a_tokenizer_and_chat_template(home, tiny_model):
    open_store(home).put("model", "tiny", str(tiny_model), owner="local")
    src = home / "datasets"
    src.mkdir()
    rows = [{"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am ShuBot. " * k}]}
            for k in range(1, 30)]
    rows += [rows[0], {"messages": [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是小书。"}]}]
    (src / "chat.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "{bad\n")
    ds.register(src / "chat.jsonl", "chat", "upload", home, owner="local")
    job_id = queue.submit("dataset_stats", {"dataset": "chat", "model": "tiny", "max_length": 40, "bins": 5}, home=home, owner="local")
    no_model = queue.submit("dataset_stats", {"dataset": "shubot_self_cognition"}, home=home, owner="local")
    missing = queue.submit("dataset_stats", {"dataset": "nope"}, home=home, owner="local")
    ds.ensure_samples(home)
    run_burst(home)
    job, res = result(home, job_id)
    assert job.state == "succeeded", res
    assert res["rows"] == 31 and res["bad_rows"] == 1 and res["bad_lines"] == [32]
    assert res["unit"] == "tokens" and res["duplicates"] == 1
    assert res["languages"] == {"en": 30, "zh": 1}
    assert sum(res["histogram"]["counts"]) == 31 and len(res["histogram"]["edges"]) == 6
    assert 0 < res["over_max"] < 31 and res["lengths"]["max"] > 40
    assert (paths.job_dir(job_id, home) / "artifacts" / "stats.json").exists()
    events = (paths.job_dir(job_id, home) / "events.jsonl").read_text()
    assert '"type": "progress"' in events
    job, res = result(home, no_model)
    assert job.state == "succeeded" and res["unit"] == "characters" and res["rows"] == 102
    job, res = result(home, missing)
    assert job.state == "failed" and "no dataset" in res["error"]["message"]


def test_import_from_a_url_through_the_worker(home, http_dir):
    folder, base = http_dir
    (folder / "tiny_alpaca.jsonl").write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n" * 2)
    ok = queue.submit("dataset_import", {"source": "url", "id": f"{base}/tiny_alpaca.jsonl"}, home=home, owner="local")
    gone = queue.submit("dataset_import", {"source": "url", "id": f"{base}/missing.jsonl", "name": "m"}, home=home, owner="local")
    run_burst(home, WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK=1)
    job, res = result(home, ok)
    assert job.state == "succeeded", res
    assert res["name"] == "tiny_alpaca" and res["format"] == "alpaca" and res["rows"] == 1
    entry = open_store(home).get("dataset", "tiny_alpaca")
    assert entry.meta["source"] == "url" and entry.job_id == ok
    job, res = result(home, gone)
    assert job.state == "failed" and res["error"]["class"] == "download_error"
    again = queue.submit("dataset_import", {"source": "url", "id": f"{base}/tiny_alpaca.jsonl"}, home=home, owner="local")
    run_burst(home, WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK=1)
    job, res = result(home, again)
    assert job.state == "failed" and "already exists" in res["error"]["message"]


def test_hub_download_file_handling(tmp_path):
    """What happens after snapshot_download: pick the split's files, merge them into one JSONL."""
    snap = tmp_path / "snap"
    (snap / "data").mkdir(parents=True)
    (snap / "README.md").write_text("# card")
    (snap / "dataset_info.json").write_text("{}")
    import pyarrow as pa
    import pyarrow.parquet as pq
    for part in ("train-00000-of-00002", "train-00001-of-00002", "test-00000-of-00001"):
        pq.write_table(pa.Table.from_pylist([{"question": f"{part} q{i}", "answer": "a"} for i in range(3)]),
                       snap / "data" / f"{part}.parquet")
    files = pick_files(snap, "train")
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [f.name for f in pick_files(snap, "test")] == ["test-00000-of-00001.parquet"]
    out = tmp_path / "out"
    out.mkdir()
    target = place(files, out, "hub_qa")
    assert target.name == "hub_qa.jsonl" and ds.detect_format(target) == "qa"
    assert len(list(ds.iter_records(target))) == 6
    assert place(pick_files(snap, "test"), out, "one").name == "one.parquet"
    from jobs.common import JobError
    with pytest.raises(JobError, match="already exists"):
        place(files, out, "hub_qa")
    with pytest.raises(JobError, match="no data file"):
        place([], out, "x")
