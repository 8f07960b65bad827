"""Logging in (WORKBENCH_AUTH=accounts or header): the gate app.py runs before any page.

The login form itself is a plain HTTP route on the same port (backend/access/webauth.py): it sets the session
cookie ``HttpOnly; SameSite=Strict`` from the server's answer, so no script can read it and it sticks on
every login. Streamlit sees it in the WebSocket handshake (``st.context.cookies``); this gate checks it
on every run, so a session ended elsewhere (Logout, a reset, a disabled account) ends here too.
"""
from __future__ import annotations

from urllib.parse import quote

import streamlit as st
from streamlit import config

from backend.access import users
from backend.pipeline import classroom
from pages import keys, ui


def _route(path: str) -> str:
    """A route of backend/access/webauth.py under the app's base URL path."""
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return (f"/{base}" if base else "") + path


def _become(me: users.User, token: str | None) -> None:
    if st.session_state.get(keys.USER) is None and me.lang:    # the account's language, once per browser session
        st.session_state[keys.LANG] = me.lang
    st.session_state[keys.USER], st.session_state[keys.TOKEN] = me, token


def class_mode() -> bool:
    return users.mode() != "none"


def announcement() -> None:
    if class_mode() and (text := classroom.announcement(home=ui.home())):
        st.info(text, icon=":material/campaign:")


def gate() -> bool:
    """Set the acting user for this run; or show the login (or first-password) form and return False."""
    mode = users.mode()
    if mode == "none":
        return True
    if mode == "header":
        me = users.header_user(dict(st.context.headers), st.context.ip_address, home=ui.home())
        if me is None:
            st.error(ui.t("auth.no_header"))
            return False
        _become(me, None)
        return True
    token = st.context.cookies.get(users.COOKIE)
    me = users.session_user(token, home=ui.home())
    if me is None:                 # logged out, reset or disabled since this page opened: log in again
        st.session_state.pop(keys.USER, None)
        st.session_state.pop(keys.TOKEN, None)
        st.title(ui.t("auth.title"))
        here = "/" + st.context.url.split("/", 3)[-1] if st.context.url.count("/") >= 3 else "/"
        st.markdown(f'<a href="{_route("/auth/login")}?next={quote(here)}" target="_self">{ui.t("auth.login")}</a>',
                    unsafe_allow_html=True)
        return False
    _become(me, token)
    if me.must_change:
        ui.language_picker()
        _change_form(me)
        return False
    return True


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
        st.session_state[keys.USER] = users.change_password(me, old, new, keep=st.session_state.get(keys.TOKEN), home=ui.home())
    except users.Refused as e:
        st.error(ui.t("auth.change.refused", why=ui.error_text(e)))
        return
    st.rerun()


def signed_in() -> None:
    """The sidebar's account line and Logout (no Logout behind a login proxy: the proxy owns the session)."""
    me = ui.user()
    st.markdown(ui.t("auth.signed_in", name=me.name, role=ui.t("auth.role." + me.role)))
    if st.session_state.get(keys.TOKEN):     # the route ends the session on the server and clears the cookie
        st.markdown(f'<a href="{_route("/auth/logout")}" target="_self" class="logout">{ui.t("auth.logout")}</a>',
                    unsafe_allow_html=True)
