"""The app's own door, for real (python -m pages, the Streamlit server): only loopback names and the ones the
operator adds reach its WebSocket (a page elsewhere cannot drive it by DNS rebinding); AUTH=none never
binds an address other machines reach; AUTH=header never starts without the proxy's shared secret."""
from __future__ import annotations

import socket
import subprocess

from tests.conftest import PY, ROOT, app_healthy, env_for, free_port, start_app, stop, wait_for


def upgrade(port: int, host: str) -> bytes:
    """The status line the app answers a WebSocket upgrade with ``Host: host``."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: streamlit\r\n\r\n".encode())
        return s.recv(200).split(b"\r\n")[0]


def test_only_known_host_names_reach_the_websocket(home):
    port = free_port()
    proc = start_app(home, port, WORKBENCH_ALLOWED_HOSTS="lab.example.edu")
    try:
        wait_for(lambda: app_healthy(f"http://127.0.0.1:{port}") or proc.poll() is not None, 60, 0.2, "the app")
        assert proc.poll() is None, (home / "streamlit.log").read_text()
        assert b" 101 " in upgrade(port, f"127.0.0.1:{port}") and b" 101 " in upgrade(port, "localhost")
        assert b" 101 " in upgrade(port, "lab.example.edu")
        assert b" 101 " not in upgrade(port, "evil.example") and b" 101 " not in upgrade(port, f"evil.example:{port}")
    finally:
        stop(proc)


def start(home, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pages", "--server.port", str(free_port()), *args], cwd=ROOT,
                          env=env_for(home, **env), capture_output=True, text=True, timeout=60)


def test_single_user_mode_binds_loopback_only_and_header_mode_needs_the_secret(home):
    for address in ("0.0.0.0", "192.0.2.10", ""):
        out = start(home, "--server.address", address, WORKBENCH_AUTH="none")
        assert out.returncode != 0 and "binds a loopback address only" in out.stderr, out.stderr
    out = start(home, WORKBENCH_AUTH="none", WORKBENCH_ADDRESS="0.0.0.0")
    assert out.returncode != 0 and "loopback" in out.stderr
    out = start(home, WORKBENCH_AUTH="header", WORKBENCH_AUTH_PROXY_SECRET="short")
    assert out.returncode != 0 and "WORKBENCH_AUTH_PROXY_SECRET" in out.stderr
