"""Every URL a user gives goes through the one URL guard (backend/core/url_guard.py) before a packet leaves:
the Chat and Agent pages' outside URL (and its redirects), the agent job's URL, the evaluate endpoint
check. Tests send traffic to 127.0.0.0/8 only: every connect is intercepted, and one to any other address
fails the test, so each refusal below is shown to come before any connect."""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.pipeline import chat
from backend.runtime import queue
from backend.kinds import evaluate as opencompass

BAD = ["http://10.1.2.3/v1", "http://172.16.0.5:8000/v1", "http://192.168.0.1/v1", "http://169.254.169.254/v1",
       "http://[fe80::1]/v1", "http://0.0.0.0:8000/v1", "http://127.0.0.1:9/v1", "http://localhost:9/v1"]


@pytest.fixture
def connects(monkeypatch):
    """Every address a socket connects to in this process; one outside 127.0.0.0/8 is refused and recorded."""
    tried, real = [], socket.socket.connect

    def connect(self, address):
        tried.append(address[0])
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise OSError(f"the test stopped a connect to {address[0]}")
        return real(self, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def test_private_link_local_and_loopback_urls_are_refused_before_any_connect(home, connects, monkeypatch):
    monkeypatch.setenv("WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK", "0")
    for url in BAD:
        with pytest.raises(chat.ChatError, match="is refused: .*loopback, private or link-local"):
            chat.external(url, api_key="k")
        with pytest.raises(queue.SubmitError, match="is refused: .*loopback, private or link-local"):
            queue.submit("agent", {"prompt": "hi", "url": url, "model": "m"}, home=home, owner="local")
        assert opencompass.endpoint_problem(url, "k", timeout=3, home=home).key == "err.url.blocked"
    with pytest.raises(queue.SubmitError, match="not an http"):
        queue.submit("agent", {"prompt": "hi", "url": "ftp://10.1.2.3/v1", "model": "m"}, home=home, owner="local")
    assert connects == []
    monkeypatch.setenv("WORKBENCH_URL_ALLOW", "10.1.2.0/24")          # a class's own network, allowed by the operator
    with pytest.raises(chat.ChatError, match="cannot reach"):
        chat.external("http://10.1.2.3/v1", api_key="k")
    assert connects == ["10.1.2.3"]                                    # now it tried (and the test stopped it)


class Redirect(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/v1/models")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_to_a_private_address_is_refused(home, connects):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        with pytest.raises(chat.ChatError, match="169.254.169.254 is a loopback, private or link-local"):
            chat.external(url, api_key="k")
        assert opencompass.endpoint_problem(url, "k", timeout=3, home=home).key == "err.url.blocked"
    finally:
        server.shutdown()
        server.server_close()
    assert set(connects) == {"127.0.0.1"}
