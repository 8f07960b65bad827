"""Servers answer only the workbench: each serve/vlm endpoint has its own API key (kept with the endpoint)
that the backend's clients send; a request without it gets 401; the vlm server caps bodies and refuses a
bad Content-Length; an idle CPU server ends itself."""
from __future__ import annotations

import http.client
import json
import shutil
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from backend.access import users
from backend.pipeline import chat, vlm
from backend.runtime import logs, queue
from backend.core.store import open_store
from tests.conftest import endpoint_of, start_worker, stop, wait_for
from tests.test_vlm import png


def answer(url: str, key: str = "", body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def status(url: str, key: str = "", body: dict | None = None) -> int:
    return answer(url, key, body)[0]


def raw(url: str, headers: dict, body: bytes = b"") -> int:
    """A POST with exactly these headers (urllib would fix a bad Content-Length)."""
    u = urlsplit(url)
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    con.putrequest("POST", u.path)
    for k, v in headers.items():
        con.putheader(k, v)
    con.endheaders()
    if body:
        con.send(body)
    code = con.getresponse().status
    con.close()
    return code


@pytest.mark.slow
def test_serve_answers_only_with_its_key_and_models_and_an_idle_cpu_server_ends_itself(home, tiny_model, tmp_path):
    open_store(home).put("model", "tiny", str(tiny_model), {"source": "test"}, owner="local")
    w = start_worker(home, WORKBENCH_CPU_SERVER_IDLE_S=8)
    try:
        job_id = queue.submit("serve", {"model": "tiny"}, home=home, owner="local")
        ep = endpoint_of(home, job_id)
        key, url = ep["api_key"], ep["url"]
        assert len(key) > 30 and ep["idle_stop_s"] == 8
        ask = {"model": ep["model"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert status(url + "/chat/completions", body=ask) == 401
        assert status(url + "/chat/completions", "wrong-key", ask) == 401
        assert status(url + "/models") == 401
        assert status(url + "/chat/completions", key, ask) == 200
        assert "".join(chat.stream_chat(ep, chat.build_messages([], "Hi"), max_tokens=4, by=users.OPERATOR, home=home)) is not None   # the Chat page's client
        assert key not in logs.read_log(job_id, home=home)[0]
        # only the model it was started with: another folder is never loaded, whatever the route
        other = shutil.copytree(tiny_model, tmp_path / "another-model")
        code, body = answer(url + "/chat/completions", key, {**ask, "model": str(other)})
        assert code == 404 and json.loads(body)["error"]["code"] == "model_not_found", body
        root = url.removesuffix("/v1")
        assert status(root + "/load_model", key, {"model": str(other)}) == 404
        assert status(root + "/reset", key, {}) == 404
        code, body = answer(url + "/models", key)
        assert code == 200 and [m["id"] for m in json.loads(body)["data"]] == [ep["model"]]
        assert str(other) not in logs.read_log(job_id, home=home)[0]
        # the body is read once, capped; a bad length is refused before reading
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        assert raw(url + "/chat/completions", {**auth, "Content-Length": str(64 * 2**20)}) == 413
        assert raw(url + "/chat/completions", {**auth, "Content-Length": "12abc"}) == 400
        assert status(url + "/chat/completions", key, ask) == 200
        # nothing more is asked: the CPU server stops itself and its endpoint goes away
        wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "succeeded", 90, 0.5, "the idle server to end itself")
        assert logs.result(job_id, home)["stopped"] == "idle" and chat.endpoints(home, by=users.OPERATOR) == []
        assert "no request for" in logs.read_log(job_id, home=home)[0]
    finally:
        stop(w)


@pytest.mark.slow
def test_vlm_server_needs_its_key_caps_bodies_and_refuses_bad_lengths(home, worker, tiny_llava):
    open_store(home).put("model", "tiny-llava", str(tiny_llava), {"source": "test"}, owner="local")
    job_id = queue.submit("vlm", {"model": "tiny-llava"}, home=home, owner="local")
    ep = endpoint_of(home, job_id, 90)
    chat_url, key = ep["url"] + "/chat", ep["api_key"]
    hello = {"messages": [{"role": "user", "content": "hi", "images": []}], "max_new_tokens": 2}
    assert status(chat_url, body=hello) == 401 and status(chat_url, "nope", hello) == 401
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    assert raw(chat_url, {**auth, "Content-Length": "-5"}) == 400
    assert raw(chat_url, {**auth, "Content-Length": "12abc"}) == 400
    assert raw(chat_url, auth) == 411
    assert raw(chat_url, {**auth, "Content-Length": str(10**12)}) == 413
    # the XComposer page's client sends the key: the server still answers
    assert "".join(vlm.stream(ep, [{"role": "user", "content": "What is it?", "images": [png()]}], max_new_tokens=3, by=users.OPERATOR, home=home))
    queue.cancel(job_id, home, by=users.OPERATOR)
    wait_for(lambda: queue.get(job_id, home, by=users.OPERATOR).state == "cancelled", 30, 0.2, "the vlm job to stop")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from tests.fixtures.tiny_vlm import make_tiny_llava
    return make_tiny_llava(tmp_path_factory.mktemp("tinyvlm") / "tiny-llava")
