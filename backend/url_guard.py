"""Fetching a URL a user gave without reaching inside the box: every connection (the first and each
redirect hop) goes only to public addresses. The host name is resolved once, each address is checked, and
the socket connects to the checked address itself, so a name that resolves differently the second time
can't slip through. Loopback, private, link-local, shared, reserved and multicast addresses are refused;
WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK=1 lets tests reach 127.0.0.1 (never set it on a class server).
No proxy is used: through one, the final address could not be checked."""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.request

from backend import defaults


class BlockedAddress(OSError):
    """The URL (or a redirect) leads to an address imports may not reach."""


def check_address(ip: str) -> None:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if getattr(addr, "ipv4_mapped", None):
        addr = addr.ipv4_mapped
    if addr.is_loopback and defaults.setting("URL_IMPORT_ALLOW_LOOPBACK"):
        return
    if not addr.is_global or addr.is_multicast:
        raise BlockedAddress(f"{ip} is a loopback, private or link-local address, which imports may not reach")


def connect(host: str, port: int, timeout) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        check_address(sockaddr[0])
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last


class _HTTP(http.client.HTTPConnection):
    def connect(self):
        self.sock = connect(self.host, self.port, self.timeout)


class _HTTPS(http.client.HTTPSConnection):
    def connect(self):
        self.sock = self._context.wrap_socket(connect(self.host, self.port, self.timeout), server_hostname=self.host)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTP, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPS, req, context=self._context)


def open_url(url: str, timeout: float):
    """urlopen for a user's URL: http(s) only, public addresses only at every hop, no proxy."""
    if not url.startswith(("http://", "https://")):
        raise BlockedAddress(f"{url} is not an http(s) URL")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HTTPHandler, _HTTPSHandler)
    return opener.open(url, timeout=timeout)


def blocked(e: BaseException) -> BlockedAddress | None:
    """The BlockedAddress behind an error urllib raised (it wraps them in URLError), or None."""
    reason = getattr(e, "reason", e)
    return reason if isinstance(reason, BlockedAddress) else None
