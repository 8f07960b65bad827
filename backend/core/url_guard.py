"""The one guard for every URL a user gives (dataset import, the Chat and Agent pages' outside URL, the
agent job's URL, the evaluate endpoint check): http(s) only, and every connection (the first and each
redirect hop) goes only to public addresses or to networks the operator allows (WORKBENCH_URL_ALLOW).
The host name is resolved once, each address is checked, and the socket connects to the checked address
itself, so a name that resolves differently the second time can't slip through. Loopback, private,
link-local, shared, reserved and multicast addresses are refused; a redirect to another scheme (ftp:,
file:) is refused; WORKBENCH_URL_IMPORT_ALLOW_LOOPBACK=1 lets tests reach 127.0.0.1 (never set it on a
class server). No proxy is used: through one, the final address could not be checked."""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request

from backend.core import defaults


class BlockedAddress(OSError):
    """The URL (or a redirect) leads to an address imports may not reach."""


def allowed_networks() -> list:
    """WORKBENCH_URL_ALLOW: the private networks (CIDRs or addresses) the operator lets user URLs reach."""
    return [ipaddress.ip_network(n.strip(), strict=False) for n in defaults.setting("URL_ALLOW").split(",") if n.strip()]


def check_address(ip: str) -> None:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if getattr(addr, "ipv4_mapped", None):
        addr = addr.ipv4_mapped
    if addr.is_loopback and defaults.setting("URL_IMPORT_ALLOW_LOOPBACK"):
        return
    if any(addr in net for net in allowed_networks()):
        return
    if not addr.is_global or addr.is_multicast:
        raise BlockedAddress(f"{ip} is a loopback, private or link-local address, which imports may not reach")


def resolve(host: str, port: int) -> list:
    """``host``'s addresses (getaddrinfo rows), each checked (BlockedAddress for any that is not allowed)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        check_address(sockaddr[0])
    return infos


def check_url(url: str) -> None:
    """Refuse (BlockedAddress) a URL that is not http(s) or whose host resolves to an address not allowed; no
    connection is made. For a client that connects by itself (the agent's), after the check."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BlockedAddress(f"{url} is not an http(s) URL, which imports may not reach")
    try:
        resolve(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except socket.gaierror as e:
        raise BlockedAddress(f"{parsed.hostname} does not resolve ({e.strerror})") from None


def connect(host: str, port: int, timeout) -> socket.socket:
    infos = resolve(host, port)
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


class _Redirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.startswith(("http://", "https://")):
            raise BlockedAddress(f"{newurl} is not an http(s) URL, which imports may not reach")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url, timeout: float):
    """urlopen for a user's URL (a string or a Request): http(s) only, at every hop; public addresses only;
    no proxy."""
    full = url.full_url if isinstance(url, urllib.request.Request) else url
    if not full.startswith(("http://", "https://")):
        raise BlockedAddress(f"{full} is not an http(s) URL, which imports may not reach")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HTTPHandler, _HTTPSHandler, _Redirect)
    return opener.open(url, timeout=timeout)


def http_client(http):
    """A client of ``http`` (the httpx-style library the openai package speaks) whose every request, redirects
    included, resolves its host here, checks the addresses and connects to the checked one (the name still
    goes in Host and TLS SNI); no proxy from the environment."""
    class Guarded(http.BaseTransport):
        def __init__(self):
            self.inner = http.HTTPTransport(trust_env=False)

        def handle_request(self, request):
            host = request.url.host
            try:
                ip = resolve(host, request.url.port or (443 if request.url.scheme == "https" else 80))[0][4][0]
            except (BlockedAddress, socket.gaierror) as e:
                raise http.ConnectError(str(e), request=request) from e
            request.url = request.url.copy_with(host=ip)
            request.extensions = {**request.extensions, "sni_hostname": host}
            return self.inner.handle_request(request)

        def close(self):
            self.inner.close()
    return http.Client(transport=Guarded(), trust_env=False, follow_redirects=True)


def blocked(e: BaseException | None) -> BlockedAddress | None:
    """The BlockedAddress behind an error (urllib wraps them in URLError, HTTP clients chain them), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        reason = getattr(e, "reason", e)
        if isinstance(reason, BlockedAddress):
            return reason
        e = e.__cause__ or e.__context__
    return None
