"""Logging in over plain HTTP routes on the app's port (WORKBENCH_AUTH=accounts).

The browser posts the login form to ``/auth/login``; the answer sets the session cookie with
``HttpOnly; SameSite=Strict`` (no script can read it, no other site can send it) and redirects to the
page asked for. ``/auth/logout`` ends the session on the server and clears the cookie. The pages read
the same cookie from the WebSocket handshake (pages/auth.py). Until a person has a live session, a
request for a page is sent to the login form (``LoginRedirect``).
"""
from __future__ import annotations

import html
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from backend.access import users
from backend.core import defaults, i18n

FORM_MAX = 16 * 1024
OPEN = ("/_stcore", "/static", "/auth/", "/v1/", "/media", "/component", "/app/static", "/favicon")


def _prefix(base: str) -> str:
    return "/" + base.strip("/") if base.strip("/") else ""


def _lang(request: Request) -> str:
    asked = request.query_params.get("lang") or ""
    if asked in i18n.LANGS:
        return asked
    return "zh" if "zh" in request.headers.get("accept-language", "")[:5] else defaults.setting("LANG")


def _next(value: str, prefix: str) -> str:
    """Where to go after login: a path on this site only (never another host)."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else prefix + "/"


def _cookie(response: Response, request: Request, value: str, max_age: int) -> Response:
    response.set_cookie(users.COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


def _page(request: Request, prefix: str, lang: str, next_: str, name: str = "", problem: str = "",
          status: int = 200) -> HTMLResponse:
    t = lambda key: html.escape(i18n.t(key, lang))       # noqa: E731
    other = "en" if lang == "zh" else "zh"
    here = f"{prefix}/auth/login?next={quote(next_)}"
    body = f"""<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{t("auth.title")}</title>
<style>body{{font-family:sans-serif;background:#f6f7f9;display:flex;justify-content:center;padding-top:10vh}}
form{{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;width:20em}}
label{{display:block;margin:.8em 0 .2em}}input{{width:100%;padding:.5em;box-sizing:border-box}}
button{{margin-top:1.2em;width:100%;padding:.6em;background:#ff4b4b;color:#fff;border:0;border-radius:4px}}
.problem{{color:#b00020}}.lang{{float:right;font-size:.9em}}</style></head><body>
<form method="post" action="{html.escape(here)}" id="login">
<a class="lang" href="{html.escape(here)}&amp;lang={other}">{i18n.LANGS[other]}</a>
<h2>{t("auth.title")}</h2><p>{t("auth.hint")}</p>
{f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""}
<input type="hidden" name="lang" value="{lang}">
<label for="name">{t("auth.name")}</label>
<input id="name" name="name" maxlength="32" autocomplete="username" value="{html.escape(name)}" required autofocus>
<label for="password">{t("auth.password")}</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">{t("auth.login")}</button></form></body></html>"""
    response = HTMLResponse(body, status)
    if request.cookies.get(users.COOKIE) and not problem:     # a dead session's cookie goes
        _cookie(response, request, "", 0)
    return response


def routes(base: str = "") -> list[Route]:
    prefix = _prefix(base)

    async def login(request: Request) -> Response:
        next_ = _next(request.query_params.get("next", ""), prefix)
        if request.method == "GET":
            return _page(request, prefix, _lang(request), next_)
        raw = await request.body()
        form = {k: v[0] for k, v in parse_qs(raw[:FORM_MAX].decode("utf-8", "replace")).items()}
        lang = form.get("lang") if form.get("lang") in i18n.LANGS else _lang(request)
        name = form.get("name", "").strip()
        address = request.client.host if request.client else ""
        try:
            user, token = await run_in_threadpool(lambda: users.login(name, form.get("password", ""), address,
                                                                      home=defaults.home()))
        except users.Throttled:
            return _page(request, prefix, lang, next_, name, i18n.t("auth.throttled", lang), 429)
        except users.Refused:
            return _page(request, prefix, lang, next_, name, i18n.t("auth.failed", lang), 401)
        target = next_ + ("&" if "?" in next_ else "?") + f"lang={user.lang or lang}"
        return _cookie(RedirectResponse(target, 303), request, token, users.session_seconds())

    async def logout(request: Request) -> Response:
        await run_in_threadpool(users.logout, request.cookies.get(users.COOKIE), defaults.home())
        return _cookie(RedirectResponse(f"{prefix}/auth/login", 303), request, "", 0)

    return [Route(f"{prefix}/auth/login", login, methods=["GET", "POST"]),
            Route(f"{prefix}/auth/logout", logout, methods=["GET", "POST"])]


class LoginRedirect:
    """ASGI middleware: with accounts, a browser asking for a page without a live session goes to the login
    form first (and comes back to that page after it). Everything else passes untouched."""

    def __init__(self, app, base: str = ""):
        self.app, self.prefix = app, _prefix(base)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and users.mode() == "accounts":
            request = Request(scope)
            path = scope["path"][len(self.prefix):] if scope["path"].startswith(self.prefix) else scope["path"]
            if (not path.startswith(OPEN) and "text/html" in request.headers.get("accept", "")
                    and await run_in_threadpool(users.session_user, request.cookies.get(users.COOKIE),
                                                    defaults.home()) is None):
                here = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
                await RedirectResponse(f"{self.prefix}/auth/login?next={quote(here)}", 303)(scope, receive, send)
                return
        await self.app(scope, receive, send)
