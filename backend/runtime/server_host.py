"""Where a model server (serve, vlm) listens, and the address it registers in its endpoint so the app
reaches it: 127.0.0.1 with the local executor; on a cluster node (WORKBENCH_EXECUTOR slurm or ray) the
node's own address, since the app runs on another machine. WORKBENCH_SERVER_HOST chooses an address (or
an interface's: 0.0.0.0 binds all of them and registers the node's address). Every server still answers
only with its endpoint's API key (backend/runtime/server_auth.py)."""
from __future__ import annotations

import socket

from backend.core import defaults

LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"
ROUTE_PROBE = ("10.255.255.255", 9)      # a UDP connect sends nothing: it only picks the source address


def node_address() -> str:
    """This machine's address as other machines reach it: what its hostname resolves to, unless that is a
    loopback address (Debian maps the hostname to 127.0.1.1), then the source address of its default route."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
    except OSError:
        addr = LOOPBACK
    if not addr.startswith("127."):
        return addr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(ROUTE_PROBE)
            return s.getsockname()[0]
        except OSError:          # no route at all: only this machine can reach it anyway
            return addr


def bind() -> tuple[str, str]:
    """(the address a server binds, the address its endpoint's URL names)."""
    host = defaults.setting("SERVER_HOST") or (LOOPBACK if defaults.setting("EXECUTOR") == "local" else node_address())
    return host, node_address() if host == ANY else host


def url(address: str, port: int) -> str:
    return f"http://{address}:{port}"
