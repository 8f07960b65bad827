"""Downloads stay inside: a hub listing is checked as paths before anything is written or deleted, and
one model is fetched by one job at a time (tests/hubserver.py plays the hub, hostile where asked)."""
from __future__ import annotations

import hashlib
import json

import pytest

from backend.access import users
from backend.runtime import logs, queue
from backend.workspace import models
from jobs.download import MARKER
from tests.conftest import run_burst, wait_for
from tests.hubserver import Hub
from tests.test_download import run_openxlab


@pytest.fixture
def hub(tiny_model):
    with Hub({"camp/tiny": tiny_model}) as h:
        yield h


def list_also(hub: Hub, rel: str, payload) -> None:
    """Make the hub list (and serve) ``rel``, pointing at the file ``payload``."""
    repo, data = hub.repos["camp/tiny"], payload.read_bytes()
    repo.files[rel] = payload
    repo.meta[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "lfs": False,
                      "blob": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}


def test_a_hostile_listing_writes_and_deletes_nothing(home, hub, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    payload = tmp_path / "payload.txt"
    payload.write_text("pwned")
    for rel in ("../../escaped.txt", str(victim), "sub/../../../escaped2.txt"):
        list_also(hub, rel, payload)
    job = queue.submit("download", {"source": "huggingface", "repo_id": "camp/tiny", "endpoint": hub.url}, home=home, owner="local")
    run_burst(home)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and "listed files outside the model folder" in j.error_message, \
        logs.tail(job, 30, home=home)
    assert "'../../escaped.txt'" in j.error_message and "nothing was fetched" in j.error_message
    assert victim.read_text() == "keep me"
    assert not [p for p in tmp_path.rglob("escaped*")]
    assert [p.name for p in (home / "models" / "tiny").iterdir()] == [MARKER.split("/")[0]]
    assert hub.bytes_sent == 0


def test_a_listed_path_through_a_link_out_of_the_folder_is_refused(home, hub, tmp_path):
    """An earlier partial download of the same repository left ``link`` pointing outside (ModelScope this time)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = home / "models" / "tiny"
    (dest / MARKER).parent.mkdir(parents=True)
    (dest / MARKER).write_text(json.dumps({"source": "modelscope", "repo_id": "camp/tiny"}))
    (dest / "link").symlink_to(outside)
    payload = tmp_path / "payload.txt"
    payload.write_text("pwned")
    list_also(hub, "link/config.json", payload)
    job = queue.submit("download", {"source": "modelscope", "repo_id": "camp/tiny", "endpoint": hub.url}, home=home, owner="local")
    run_burst(home)
    j = queue.get(job, home=home, by=users.OPERATOR)
    assert j.state == "failed" and "'link/config.json'" in j.error_message, logs.tail(job, 30, home=home)
    assert list(outside.iterdir()) == [] and hub.bytes_sent == 0


@pytest.mark.slow
def test_a_hostile_openxlab_listing_writes_nothing(home, hub, tmp_path):
    """The real openxlab client, whose listing names files outside the model folder: refused before it
    writes any file (it would join each name to the folder and write there)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    payload = tmp_path / "payload.txt"
    payload.write_text("pwned")
    for rel in ("../../escaped.txt", str(victim)):
        list_also(hub, rel, payload)
    out = run_openxlab(OPENXLAB_HOSTILE, home, hub, tmp_path)
    assert "ERROR openxlab listed files outside the model folder" in out.stdout, out.stdout + out.stderr
    assert "'../../escaped.txt'" in out.stdout and "nothing was fetched" in out.stdout
    assert victim.read_text() == "keep me" and not list(tmp_path.rglob("escaped*")) and not list(home.rglob("escaped*"))
    assert hub.bytes_sent == 0


OPENXLAB_HOSTILE = """
import os
from pathlib import Path
from jobs.common import Job, JobError
from jobs.download import Spec, openxlab_download
home = Path(os.environ["WORKBENCH_HOME"]); (home / "j").mkdir(); dest = home / "models" / "oxl"; dest.mkdir(parents=True)
try:
    openxlab_download(Spec(source="openxlab", repo_id="camp/tiny", name="oxl"), dest, Job(home / "j"))
except JobError as e:
    print("ERROR", e)
"""


@pytest.mark.slow
def test_one_fetch_per_model_at_a_time(home, hub, worker):
    """The same model started twice at once (two tabs): the second waits for the first, then finds the files.
    Another student's download under that name fails without touching them (the name and its folder are ann's)."""
    hub.throttle = 40_000                  # bytes/s per response: the first fetch takes a few seconds
    spec = {"source": "huggingface", "repo_id": "camp/tiny", "endpoint": hub.url}
    a, b, c = (queue.submit("download", spec, owner=o, home=home) for o in ("ann", "ann", "bob"))
    wait_for(lambda: all(queue.get(j, home=home, by=users.OPERATOR).state not in ("queued", "starting", "running") for j in (a, b, c)),
             120, 0.2, "the downloads to end")
    for j in (a, b):
        assert queue.get(j, home=home, by=users.OPERATOR).state == "succeeded", logs.tail(j, 30, home=home)
    assert queue.get(c, home=home, by=users.OPERATOR).state == "failed" and "model tiny belongs to ann" in queue.get(c, home=home, by=users.OPERATOR).error_message
    total = sum(m["size"] for m in hub.repos["camp/tiny"].meta.values())
    assert hub.bytes_sent == total, (hub.bytes_sent, total)      # fetched once, not twice in parallel
    assert models.get("tiny", home).meta["size_bytes"] >= total
