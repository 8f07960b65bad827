"""Downloads stay inside: a URL import reaches public addresses only, at every redirect hop, and is
capped in bytes and time. A redirecting HTTP server on 127.0.0.1 plays the hostile side; loopback itself
is reachable only with the test-only WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.core.job import Job
from backend.access import users
from backend.runtime import logs, queue
from backend.core.store import open_store
from tests.conftest import run_burst

ROW = (json.dumps({"instruction": "hi", "output": "hello"}) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    """/ok.jsonl: a row; /to/<url>: a redirect there; /big.jsonl: 3 MiB (with a length, or /big-nolen without);
    /slow.jsonl: a byte every 0.1 s for a minute."""
    def log_message(self, *a):
        pass

    def do_GET(self):
        p = self.path
        if p.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", p[len("/to/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = {"/ok.jsonl": ROW, "/big.jsonl": ROW * (3 * 2**20 // len(ROW)),
                "/big-nolen.jsonl": ROW * (3 * 2**20 // len(ROW))}.get(p)
        if p == "/slow.jsonl":
            self.send_response(200)
            self.end_headers()
            for _ in range(600):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)        # the hostile server trickles (not test synchronisation)
            return
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if p != "/big-nolen.jsonl":
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def imported(home, url: str, name: str, **env) -> tuple[Job, dict]:
    job = queue.submit("dataset_import", {"source": "url", "id": url, "name": name}, home=home, owner="local")
    run_burst(home, **env)
    return queue.get(job, home, by=users.OPERATOR), logs.result(job, home)


def test_loopback_private_and_link_local_are_refused_at_every_hop(home, hostile, monkeypatch):
    monkeypatch.setenv("WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK", "0")
    job, res = imported(home, f"{hostile}/ok.jsonl", "direct")               # loopback without the test setting
    assert job.state == "failed" and "127.0.0.1 is a loopback, private or link-local address" in job.error_message
    job, res = imported(home, "http://localhost:1/ok.jsonl", "byname")
    assert job.state == "failed" and "link-local address" in job.error_message, job
    allow = {"WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK": 1}
    for i, target in enumerate(["http://169.254.169.254/latest/meta-data/x.jsonl", "http://10.1.2.3/x.jsonl",
                                "http://192.168.0.1/x.jsonl", "http://[fe80::1]/x.jsonl", "http://0.0.0.0/x.jsonl",
                                f"ftp://127.0.0.1:{hostile.rsplit(':', 1)[1]}/x.jsonl"]):
        job, res = imported(home, f"{hostile}/to/{target}", f"hop{i}", **allow)
        assert job.state == "failed" and "imports may not reach" in job.error_message, (target, job)
        assert res["error"]["suggestion"] == "give a URL on the public internet"
    job, res = imported(home, f"{hostile}/to/{hostile}/ok.jsonl", "fine", **allow)
    assert job.state == "succeeded" and res["rows"] == 1
    assert [d.name for d in open_store(home).items("dataset")] == ["fine"]


def test_bytes_and_time_are_capped(home, hostile):
    env = {"WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK": 1, "WORKBENCH_UPLOAD_MAX_MB": 1, "WORKBENCH_URL_IMPORT_TIMEOUT_S": 2}
    for name in ("big", "big-nolen"):
        job, _ = imported(home, f"{hostile}/{name}.jsonl", name.replace("-", "_"), **env)
        assert job.state == "failed" and "larger than 1 MB" in job.error_message, job
    t0 = time.monotonic()
    job, _ = imported(home, f"{hostile}/slow.jsonl", "slow", **env)
    assert job.state == "failed" and "took over 2 s" in job.error_message, job
    assert time.monotonic() - t0 < 30
    assert not list((home / "datasets").glob("*")) if (home / "datasets").exists() else True
