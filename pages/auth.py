"""Logging in (WORKBENCH_AUTH=accounts or header): the gate app.py runs before any page.

The session token travels in a cookie, never in the URL (shared links and browser history would leak
it). Streamlit reads cookies (``st.context.cookies``, the ones sent with the page's WebSocket handshake)
but has no API to set one, and ``st.login`` is OpenID Connect only. So a zero-height
``components.html`` frame, which Streamlit runs same-origin, writes ``window.parent.document.cookie``
with ``SameSite=Strict`` (and ``Secure`` on https). A script-written cookie can't be HttpOnly: the
token is signed, expires (WORKBENCH_SESSION_HOURS) and names a session the store revokes at Logout.
"""
from __future__ import annotations

import json

import streamlit as st
import streamlit.components.v1 as components

from backend import classroom, users
from pages import keys, ui


def _address() -> str:
    return st.context.ip_address or "127.0.0.1"      # None when the browser is on this machine


def _write_cookie(value: str, max_age: int) -> None:
    cookie = json.dumps(f"{users.COOKIE}={value}; Path=/; Max-Age={max_age}; SameSite=Strict")
    components.html("<script>const p = window.parent;"
                    f"p.document.cookie = {cookie} + (p.location.protocol === 'https:' ? '; Secure' : '');"
                    "</script>", height=0)


def _become(me: users.User, token: str | None) -> None:
    if st.session_state.get(keys.USER) is None and me.lang:    # the account's language, once per browser session
        st.session_state[keys.LANG] = me.lang
    st.session_state[keys.USER], st.session_state[keys.TOKEN] = me, token


def class_mode() -> bool:
    return users.mode() != "none"


def announcement() -> None:
    if class_mode() and (text := classroom.announcement()):
        st.info(text, icon=":material/campaign:")


def gate() -> bool:
    """Set the acting user for this run; or show the login (or first-password) form and return False."""
    mode = users.mode()
    if mode == "none":
        return True
    if mode == "header":
        me = users.header_user(dict(st.context.headers), st.context.ip_address)
        if me is None:
            st.error(ui.t("auth.no_header"))
            return False
        _become(me, None)
        return True
    if (pending := st.session_state.pop(keys.COOKIE, None)) is not None:
        _write_cookie(*pending)
    token = st.session_state.get(keys.TOKEN) or st.context.cookies.get(users.COOKIE)
    me = users.session_user(token)
    if me is None:
        st.session_state.pop(keys.USER, None)
        st.session_state.pop(keys.TOKEN, None)
        ui.language_picker()
        _login_form()
        return False
    _become(me, token)
    if me.must_change:
        ui.language_picker()
        _change_form(me)
        return False
    return True


def _login_form() -> None:
    st.title(ui.t("auth.title"))
    st.caption(ui.t("auth.hint"))
    with st.form("login", border=True):
        name = st.text_input(ui.t("auth.name"), key="login_name", max_chars=32)
        password = st.text_input(ui.t("auth.password"), type="password", key="login_password")
        go = st.form_submit_button(ui.t("auth.login"), type="primary")
    if not go:
        return
    try:
        me, token = users.login(name.strip(), password, _address())
    except users.Throttled:
        st.error(ui.t("auth.throttled"))
        return
    except users.Refused:
        st.error(ui.t("auth.failed"))
        return
    st.session_state[keys.COOKIE] = (token, users.session_seconds())
    _become(me, token)
    st.rerun()


def _change_form(me: users.User) -> None:
    st.title(ui.t("auth.change.title"))
    st.info(ui.t("auth.change.why"))
    with st.form("change_password", border=True):
        old = st.text_input(ui.t("auth.change.old"), type="password", key="pw_old")
        new = st.text_input(ui.t("auth.change.new"), type="password", key="pw_new")
        again = st.text_input(ui.t("auth.change.again"), type="password", key="pw_again")
        go = st.form_submit_button(ui.t("auth.change.go"), type="primary")
    if not go:
        return
    if new != again:
        st.error(ui.t("auth.change.mismatch"))
        return
    try:
        st.session_state[keys.USER] = users.change_password(me, old, new)
    except users.Refused as e:
        st.error(ui.t("auth.change.refused", why=ui.error_text(e)))
        return
    st.rerun()


def signed_in() -> None:
    """The sidebar's account line and Logout (no Logout behind a login proxy: the proxy owns the session)."""
    me = ui.user()
    st.markdown(ui.t("auth.signed_in", name=me.name, role=ui.t("auth.role." + me.role)))
    token = st.session_state.get(keys.TOKEN)
    if token and st.button(ui.t("auth.logout"), key="logout"):
        users.logout(token)
        for key in (keys.USER, keys.TOKEN):
            st.session_state.pop(key, None)
        st.session_state[keys.COOKIE] = ("", 0)
        st.rerun()
