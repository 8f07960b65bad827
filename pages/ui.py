"""Widgets every page shares: language, strings, the live job view, submitting from a form.

Session keys live in pages/keys.py so pages never invent their own spelling of the same state.
"""
from __future__ import annotations

import datetime as dt
import re
import unicodedata
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml
from streamlit import config

from backend.access import ownership, users
from backend.core import defaults, errors, i18n, paths
from backend.core.job import Job
from backend.pipeline import chat
from backend.runtime import events, executors, live, queue
from backend.core.registry import Entry
from backend.core.states import JobState
from pages import keys

NAME = re.compile(r"[\w.-]{1,32}")       # a user name: letters (any script), digits, . _ -



def lang() -> str:
    if keys.LANG not in st.session_state:
        st.session_state[keys.LANG] = st.query_params.get("lang") or defaults.setting("LANG")
    return st.session_state[keys.LANG]


def t(key: str, **fmt) -> str:
    return i18n.t(key, lang(), **fmt)


def error_text(e: BaseException) -> str:
    """An exception in the user's language: a backend UserError by its key, anything else as it says itself."""
    return errors.text(e, lang())


def share_toggle(type: str, entry: Entry, key: str) -> None:
    """The owner's (or an instructor's) decision to share a registry entry with the class (ownership.share)."""
    shared = st.toggle(t("registry.shared"), value=bool(entry.shared), key=key, help=t("registry.shared_help"),
                       disabled=not ownership.may_share(entry, user(), home=home()))
    if shared != bool(entry.shared):
        try:
            ownership.share(type, entry.name, shared, by=user(), home=home())
        except users.Refused as e:
            error(e)
        else:
            st.rerun()


def error(e: BaseException, where=None) -> None:
    """Show a refusal (``st.error``, or ``where.error`` for a placeholder) in the user's language."""
    (where or st).error(error_text(e))


def home() -> Path:
    """This app's workspace: the one place pages get it (the context every backend call is given)."""
    return defaults.home()


def user() -> users.User:
    """Who this browser session is. With accounts (or a login proxy) the logged-in user (pages/auth.py set it
    before any page ran); without, the name typed in the sidebar, declared, not proven."""
    logged_in = st.session_state.get(keys.USER)
    if logged_in is None:
        return users.acting(owner(), home=home())
    if users.mode() == "accounts":        # each call asks the store again: a logout, reset, disable or a new role
        now = users.session_user(st.session_state.get(keys.TOKEN), home=home())     # reaches an open fragment's next action
        if now is None:
            st.session_state.pop(keys.USER, None)
            st.warning(t("auth.ended"))
            st.stop()
        st.session_state[keys.USER] = logged_in = now
    return logged_in


def owner() -> str:
    """The acting user's name: the logged-in account, or the name typed in the sidebar, kept in the URL
    (?user=) so a reload or a shared link keeps it; WORKBENCH_USER until then."""
    if st.session_state.get(keys.USER) is not None:
        return st.session_state[keys.USER].name
    if keys.OWNER not in st.session_state:
        asked = st.query_params.get("user", "")
        st.session_state[keys.OWNER] = asked if NAME.fullmatch(asked) else defaults.setting("USER")
    return st.session_state[keys.OWNER]


def _set_owner() -> None:
    name = unicodedata.normalize("NFKC", st.session_state[keys.OWNER_INPUT]).strip()
    if NAME.fullmatch(name):
        st.session_state[keys.OWNER] = name
    else:
        st.session_state[keys.OWNER_BAD] = True
        st.session_state[keys.OWNER_INPUT] = owner()


def _lang_changed() -> None:
    """The language is remembered with the account; without accounts, in the URL (like the name)."""
    me = st.session_state.get(keys.USER)
    if me is not None:
        users.set_lang(me, st.session_state[keys.LANG], home=home())
    else:
        st.query_params["lang"] = st.session_state[keys.LANG]


def language_picker() -> None:
    lang()
    with st.sidebar:
        # the widget's own state is the language: every string of this run already sees a change
        st.radio("Language / 语言", list(i18n.LANGS), format_func=i18n.LANGS.get, horizontal=True, key=keys.LANG,
                 on_change=_lang_changed)


def sidebar() -> None:
    language_picker()
    if st.session_state.get(keys.USER) is not None:
        return                          # signed in: app.py shows who (pages/auth.py), not a name to type
    name = owner()
    if st.query_params.get("user", defaults.setting("USER")) != name:
        st.query_params["user"] = name
    with st.sidebar:
        st.session_state.setdefault(keys.OWNER_INPUT, name)
        st.text_input(t("app.user"), key=keys.OWNER_INPUT, on_change=_set_owner, max_chars=32)
        if st.session_state.pop(keys.OWNER_BAD, False):
            st.error(t("app.user_bad"))
        if user().instructor:
            st.caption(t("app.instructor"))


def cancel_button(col, job: Job, label: str, key: str, kind: str = "secondary") -> bool:
    """A Stop/Cancel button that only the job's owner or an instructor can press; True once it was pressed."""
    allowed = queue.may_manage(job, user(), home=home())
    if not col.button(label, key=key, type=kind, disabled=not allowed,
                      help=None if allowed else t("job.not_yours", owner=job.owner)):
        return False
    try:
        queue.cancel(job.id, by=user(), home=home())
    except queue.SubmitError as e:          # the instructors changed since the page was drawn
        error(e)
        return False
    return True


def when(ts) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S") if ts else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def state_label(state: str) -> str:
    return t("state." + state)


def resources_text(r: dict | None) -> str:
    if not r or r.get("executor"):         # a cluster's job: the cluster chose (where_text says where)
        return ""
    if r.get("gpus"):
        gpus = r["gpus"] if isinstance(r["gpus"], list) else f"×{r['gpus']}"
        return f"GPU {gpus} · {float(r.get('gpu_mem_gb') or 0):.1f} GB"
    return f"CPU ×{r.get('cpu_slots', 0)}"


def where_text(given: dict | None) -> str:
    """Where a job runs: its host, or its cluster job's id and node."""
    given = given or {}
    if not given.get("executor"):
        return given.get("host", "")
    if not given.get("id"):
        return given["executor"].capitalize()
    key = "job.where.cluster" if given.get("node") else "job.where.waiting"
    return t(key, executor=given["executor"].capitalize(), id=given["id"], node=given.get("node"))


def cluster_gpus_line() -> bool:
    """The cluster's free GPUs when the worker sends jobs to one; False (nothing shown) with the local executor."""
    c = executors.cluster_gpus()
    if c is not None:
        st.info(t("home.cluster_gpus" if c["total"] is not None else "home.cluster_unknown",
                  executor=c["executor"].capitalize(), free=c["free"], total=c["total"]), icon=":material/lan:")
    return c is not None


def jobs_frame(jobs: list[Job]) -> pd.DataFrame:
    return pd.DataFrame([{
        t("jobs.col.id"): j.id, t("jobs.col.kind"): j.kind, t("jobs.col.state"): state_label(j.state),
        t("jobs.col.owner"): j.owner, t("jobs.col.label"): j.label,
        t("jobs.col.asked"): resources_text(j.asked), t("jobs.col.given"): resources_text(j.given),
        t("jobs.col.where"): where_text(j.given),
        t("jobs.col.queued"): when(j.created_at), t("jobs.col.started"): when(j.started_at),
        t("jobs.col.finished"): when(j.finished_at),
    } for j in jobs])


def jobs_frame_cached(jobs: list, name: str = "jobs") -> pd.DataFrame:
    """``jobs_frame``, rebuilt only when what it shows changed since this session's last refresh (a
    heartbeat is no change): a list that stands still costs its query, not a new table."""
    shown = [(j.id, j.state, j.owner, j.label, j.given, j.started_at, j.finished_at) for j in jobs]
    shown.append(lang())
    cached = st.session_state.get(keys.jobs_frame(name))
    if not cached or cached[0] != shown:
        cached = st.session_state[keys.jobs_frame(name)] = (shown, jobs_frame(jobs))
    return cached[1]


def list_fragment(fn, name: str) -> None:
    """Run ``fn`` (which returns the jobs it listed) as a fragment refreshing at ``live.list_interval`` of
    them; when that changes (a job started or all ended), the page reruns once to change the pace."""
    every = st.session_state.get(keys.list_every(name), live.POLL_LIST_S)

    def body():
        now = live.list_interval(fn())
        if now != every:
            st.session_state[keys.list_every(name)] = now
            st.rerun(scope="app")
    st.fragment(body, run_every=every)()


def submit(kind: str, spec: dict, **kw) -> int | None:
    """Queue a job from a form; shows the error in the page instead of raising."""
    try:
        job_id = queue.submit(kind, spec, owner=owner(), home=home(), **kw)
    except queue.SubmitError as e:
        error(e)
        return None
    st.success(t("job.queued_as", id=job_id))
    return job_id


def job_view(job_id: int, show_spec: bool = True) -> None:
    """A job's live view: header, progress with ETA, log, metrics, error, actions. Re-attaches after
    any reload because everything is read from the store and the job's files. It polls only while the job
    can change (less often while it is queued or quiet) and reads only what changed (backend.runtime.live)."""
    try:
        job = queue.get(job_id, by=user(), home=home())
    except KeyError:
        st.warning(t("job.not_found", id=job_id))
        return
    except users.Refused:
        st.warning(t("job.not_visible", id=job_id))
        return
    st.subheader(t("job.title", id=job_id, kind=job.kind))
    view = _viewer(job_id)
    view.poll()
    every = view.interval()
    st.fragment(_live, run_every=every)(job_id, every)
    st.fragment(_charts, run_every=every and max(every, live.CHART_EVERY_S))(job_id)
    if show_spec:
        with st.expander(t("job.spec")):
            st.code(yaml.safe_dump(job.spec, allow_unicode=True, sort_keys=False), language="yaml")


def _viewer(job_id: int) -> live.Viewer:
    key = keys.job_view(job_id)
    if key not in st.session_state:
        st.session_state[key] = live.Viewer(job_id, home())
    return st.session_state[key]


def _actions(job) -> bool:
    """The job's buttons; True when one of them changed the job."""
    state = job.state
    cols = st.columns(6)
    acted = False
    if not state.finished:
        acted = cancel_button(cols[0], job, t("job.cancel"), f"cancel-{job.id}", "primary")
        if state is JobState.QUEUED and user().instructor \
                and cols[2].button(t("job.run_next"), key=f"next-{job.id}"):
            try:
                queue.run_next(job.id, by=user(), home=home())
                acted = True
            except queue.SubmitError as e:        # it started meanwhile
                error(e)
        if not queue.may_manage(job, user(), home=home()):
            st.caption(t("job.not_yours", owner=job.owner))
    else:
        if cols[0].button(t("job.retry"), key=f"retry-{job.id}"):
            try:
                new_id = queue.retry(job.id, owner=owner(), by=user(), home=home())
            except queue.SubmitError as e:
                error(e)
            else:
                st.query_params["job"] = str(new_id)
                st.rerun(scope="app")
    if cols[1].button(t("job.clone"), key=f"clone-{job.id}"):
        kind, spec = queue.clone(job.id, home=home(), by=user())
        st.info(t("job.cloned", id=job.id))
        st.code(f"# python -m backend submit {kind} spec.yaml\n" + yaml.safe_dump(spec, allow_unicode=True,
                                                                                 sort_keys=False), language="yaml")
    return acted


def _live(job_id: int, every: float | None) -> None:
    """The part of a job view that follows it (a fragment polling every ``every`` seconds, or not at all)."""
    view = _viewer(job_id)
    view.poll()
    if _actions(view.job):
        view.poll()                       # a cancel shows at once
    if view.interval() != every:          # started, finished, went quiet or woke up: poll at the new pace
        st.rerun(scope="app")
    job, ev = view.job, view.events

    with st.container(key=f"jobstate-{job_id}"):
        c1, c2, c3 = st.columns(3)
        c1.metric(t("job.state"), state_label(job.state))
        given = resources_text(job.given)
        c2.metric(t("jobs.col.given") if given else t("jobs.col.asked"), given or resources_text(job.asked) or "-")
        c3.metric(t("job.exit_code"), "-" if job.exit_code is None else job.exit_code)
        st.markdown(f"<span data-testid='job-state' data-state='{job.state}'></span>", unsafe_allow_html=True)
        if where := where_text(job.given):
            st.caption(f"{t('jobs.col.where')}: {where}")
    if view.place:
        st.caption(t("job.place", n=view.place))
    if job.cancel_requested and not job.finished:
        st.warning(t("job.cancelling"))
    p = ev.progress
    if p and p.get("total"):
        frac = min(1.0, max(0.0, float(p["done"]) / float(p["total"])))
        if job.state == JobState.SUCCEEDED:
            frac = 1.0
        eta = ev.eta_s()
        label = (t("job.eta", done=_num(p["done"]), total=_num(p["total"]), unit=p.get("unit", ""), eta=duration(eta))
                 if eta is not None and job.state == JobState.RUNNING
                 else t("job.progress", done=_num(p["done"]), total=_num(p["total"]), unit=p.get("unit", "")))
        st.progress(frac, text=label + (f" · {p['message']}" if p.get("message") else ""))
    if job.state in (JobState.FAILED, JobState.LOST):
        cls = job.error_class or "crash"
        st.error(t("job.error", cls=cls, message=errors.job_message(view.result, lang()) or job.error_message or ""))
        specific = errors.job_suggestion(view.result, lang())
        st.info(t(errors.SUGGESTIONS.get(cls, "err.crash")) + (f"\n\n{t('job.try', what=specific)}" if specific else ""))
    with st.container(key=f"joblog-{job_id}"):
        st.caption(t("job.log"))
        st.code(view.text or " ", language=None, height=360)
    if ev.messages:
        with st.expander(t("job.events")):
            for m in ev.messages:
                st.text(f"{when(m['t'])} {m.get('level', '')} {m.get('text', '')}")
    if job.state == JobState.SUCCEEDED and view.result:
        with st.expander(t("job.result")):
            st.json(view.result)


def _charts(job_id: int) -> None:
    """The metric charts: a fragment of their own that redraws less often than the log (a chart is the
    costliest thing a view sends and draws), from the parse every session shares."""
    ev = events.events(job_id, home=home())
    if ev.series:
        with st.expander(t("job.metrics"), expanded=True):
            series_charts(ev.series)
            if (folder := paths.job_dir(job_id, home=home()) / defaults.TENSORBOARD_DIR).is_dir():
                st.caption(t("job.tensorboard", folder=folder))
            for tracker, sub in defaults.TRACKER_DIRS.items():
                if (folder := paths.job_dir(job_id, home=home()) / sub).is_dir():
                    st.caption(t(f"job.{tracker}", folder=folder))
    if ev.completions:
        completions_table(job_id, ev.completions)


def completions_table(job_id: int, shown: tuple[dict, ...]) -> None:
    """A GRPO job's sampled answers with their rewards, one logged step at a time (the latest first)."""
    with st.expander(t("job.completions"), expanded=True), st.container(key="grpo-completions"):
        steps = [e["step"] for e in reversed(shown)]
        step = st.selectbox(t("job.completions.step"), steps, key=f"grpo_step_{job_id}") if len(steps) > 1 else steps[0]
        rows = next(e["rows"] for e in shown if e["step"] == step)
        st.dataframe([{t("job.completions.prompt"): r["prompt"], t("job.completions.completion"): r["completion"],
                       t("job.completions.reward"): r["reward"], **r["rewards"]} for r in rows], hide_index=True)


def _num(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) and float(x).is_integer() else f"{x:,.2f}"


def series_charts(series: dict[str, list[tuple[float, float]]]) -> None:
    """One line chart per metric, x = step."""
    cols = st.columns(min(3, max(1, len(series))))
    for i, (name, points) in enumerate(series.items()):
        with cols[i % len(cols)]:
            st.caption(name)
            line_chart({name: points}, height=180, legend=False)


def line_chart(series: dict[str, list[tuple[float, float]]], height: int, legend: bool = True) -> None:
    """Lines of (step, value) points, one per name: a Vega-Lite spec of the points as they are, with no
    pandas or Altair per refresh (building those per session and second was most of a live view's cost)."""
    values = [{"step": s, "value": v, "line": name} for name, points in series.items() for s, v in points]
    color = {"field": "line", "type": "nominal", "title": None} if legend else {"value": "#1f77b4"}
    st.vega_lite_chart({
        "data": {"values": values}, "mark": {"type": "line"},
        "encoding": {"x": {"field": "step", "type": "quantitative"}, "color": color,
                     "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}}},
        height=height, width="stretch")


def gateway_url() -> str:
    """The /v1 gateway as a laptop reaches it through the SSH tunnel (the same port as the pages)."""
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return f"http://127.0.0.1:{config.get_option('server.port')}/{base + '/' if base else ''}v1"


def open_chat_on(ep: dict) -> None:
    """Have the Chat page pick endpoint ``ep``; with its base served beside it, Compare opens on base
    (left) vs ``ep`` (right)."""
    st.session_state[keys.CHAT_PICK] = ep["name"]
    base = chat.base_endpoint(ep, home=home())
    if base:
        st.session_state[keys.CHAT_CMP_LEFT], st.session_state[keys.CHAT_CMP_RIGHT] = base["name"], ep["name"]


def chat_if_served(model: str, adapter: str = "") -> None:
    """If a live endpoint already serves ``model`` (with ``adapter``), open the Chat page on it (and do not
    return): "Chat with it" then needs no second server, which on CPU would wait for the first to end."""
    ep = chat.serving(model, adapter, home=home())
    if ep:
        open_chat_on(ep)
        st.switch_page("pages/chat.py")


def external_form(prefix: str, kept: dict) -> str | None:
    """The "add an outside OpenAI-compatible URL" form (Chat, Agent): checks the URL and key with
    ``chat.external`` and keeps ``{"endpoint", "key"}`` in ``kept`` (this browser session's) under the
    endpoint's name; returns that name when one was added."""
    with st.expander(t("chat.external")), st.form(f"{prefix}_external_form"):
        url = st.text_input(t("chat.external.url"), placeholder="https://api.example.com/v1", key=f"{prefix}_ext_url")
        key = st.text_input(t("chat.external.key"), type="password", key=f"{prefix}_ext_key")
        model = st.text_input(t("chat.external.model"), key=f"{prefix}_ext_model")
        if not st.form_submit_button(t("chat.external.add")):
            return None
        try:
            ep = chat.external(url, key, model)
        except chat.ChatError as e:
            error(e)
            return None
        kept[ep["name"]] = {"endpoint": ep, "key": key}
        st.success(t("chat.external.added", name=ep["name"], model=ep["model"]))
        return ep["name"]
