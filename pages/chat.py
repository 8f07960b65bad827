"""Chat: start or pick an OpenAI-compatible endpoint, chat with streaming answers, compare two side by side.

The page never loads a model: `serve` jobs run the servers, backend/pipeline/chat.py talks to them. API keys of
external URLs live only in this browser session.
"""
import streamlit as st

from backend.core import errors
from backend.pipeline import chat, rag
from backend.runtime import queue
from backend.runtime.live import Viewer
from pages import keys, ui

S_HISTORY, S_PENDING, S_EXTERNAL = keys.CHAT_HISTORY, keys.CHAT_PENDING, keys.CHAT_EXTERNAL
S_STARTING, S_COMPARE, S_ERROR, S_CMP_ERRORS = keys.CHAT_STARTING, keys.CHAT_COMPARE, keys.CHAT_ERROR, keys.CHAT_CMP_ERRORS

st.title(ui.t("nav.chat"))
st.session_state.setdefault(S_HISTORY, [])
st.session_state.setdefault(S_COMPARE, [[], []])     # Compare: the left and the right column's own history
st.session_state.setdefault(S_EXTERNAL, {})          # name -> {"endpoint": ..., "key": ...}


def keep_interrupted() -> None:
    """Answers cut off by Stop (or any click) while streaming: keep what had arrived. ``texts`` holds one
    entry per history being answered; None where that answer had already ended."""
    pending = st.session_state.pop(S_PENDING, None)
    if not pending:
        return
    histories = [st.session_state[S_HISTORY]] if pending["kind"] == "chat" else st.session_state[S_COMPARE]
    for history, text in zip(histories, pending["texts"]):
        if text is not None:
            history.append({"role": "assistant", "content": text, "note": ui.t("chat.stopped")})


def show(message: dict) -> None:
    with st.chat_message(message["role"]):
        st.markdown(message["content"] or " ")
        if message.get("note"):
            st.caption(message["note"])
        if message.get("passages"):         # from a knowledge-base endpoint: where the answer's context came from
            with st.expander(ui.t("chat.passages", n=len(message["passages"])), expanded=True):
                for p in message["passages"]:
                    st.markdown(f"**{rag.place(p)}**")
                    st.code(p.get("text", ""), language=None, wrap_lines=True)     # as written, not as markdown


keep_interrupted()


# -- endpoints: live ones, start one, add an external URL ----------------------------------------------
@st.fragment(run_every=1.0)
def starting(job_id: int) -> None:
    """A serve job coming up: its progress and last log lines, until its endpoint is live."""
    job = queue.get(job_id, home=ui.home(), by=ui.user())
    ep = chat.serve_job_endpoint(job_id, home=ui.home())
    if ep:
        st.session_state.pop(S_STARTING, None)
        ui.open_chat_on(ep)
        st.rerun(scope="app")
    with st.container(key="chat_starting", border=True):
        st.markdown(ui.t("chat.starting", id=job_id, state=ui.state_label(job.state)))
        view = st.session_state.setdefault(keys.job_view(job_id), Viewer(job_id, ui.home()))
        view.poll()                                           # reads only what changed (backend.runtime.live)
        p = view.events.progress
        if p and p.get("total"):
            st.progress(min(1.0, p["done"] / p["total"]), text=p.get("message") or "")
        if job.state.unsuccessful:
            cls = job.error_class or "crash"
            st.error(ui.t("job.error", cls=cls, message=job.error_message or ""))
            st.info(ui.t(errors.SUGGESTIONS.get(cls, "err.crash")))
            if st.button(ui.t("chat.dismiss"), key="chat_dismiss"):
                st.session_state.pop(S_STARTING, None)
                st.rerun(scope="app")
        st.code("\n".join(view.text.splitlines()[-8:]) or " ", language=None)


live = chat.endpoints(by=ui.user(), home=ui.home())
with st.container(key="chat_endpoints"):
    st.subheader(ui.t("chat.endpoints"))
    if not live:
        st.caption(ui.t("chat.no_endpoints"))
    for ep in live:
        c = st.columns([3, 3, 2, 1, 1, 1, 1], vertical_alignment="center")
        c[0].markdown(f"**{ep['name']}**")
        c[1].caption(ep.get("source") or ep["model"])
        c[2].caption(f"{ep['engine']} · {ep['device']}" + (ui.t("chat.kv_budget", gb=ep["kv_cache_gb"])
                                                           if ep.get("kv_cache_gb") else ""),
                     help=ui.t("deploy.kv_note") if ep.get("kv_cache_gb") else None)
        c[3].caption(ui.duration(chat.uptime_s(ep)))
        c[4].caption(ui.t("chat.requests", n=ep.get("requests", 0)))
        c[5].page_link("pages/jobs.py", label=ui.t("chat.job", id=ep["job_id"]), query_params={"job": ep["job_id"]})
        if ep.get("base_of"):       # served by the same job as the fine-tuned one: one Stop, on that row
            c[6].caption(ui.t("chat.base_of"))
        elif ui.cancel_button(c[6], queue.get(ep["job_id"], home=ui.home(), by=ui.user()), ui.t("chat.stop_server"),
                              f"chat_stop_server_{ep['job_id']}"):
            st.rerun()
    idle = max((ep.get("idle_stop_s") or 0 for ep in live), default=0)
    if idle:
        st.caption(ui.t("chat.idle_stop", minutes=max(1, round(idle / 60))))

    with st.expander(ui.t("chat.start"), expanded=(not live or keys.CHAT_MODEL in st.session_state)
                     and not st.session_state.get(S_STARTING)):
        options = chat.servable(by=ui.user(), home=ui.home())
        if not options:
            st.info(ui.t("chat.no_models"))
        else:
            c1, c2, c3 = st.columns([4, 2, 2], vertical_alignment="bottom")
            wanted = st.session_state.pop(keys.CHAT_MODEL, None)       # "Chat with it" on the Models page
            first = next((i for i, o in enumerate(options) if o["spec"] == {"model": wanted}), 0)
            pick = c1.selectbox(ui.t("chat.serve_what"), options, format_func=lambda o: o["label"], index=first,
                                key="chat_serve_pick")
            engine = c2.selectbox(ui.t("chat.engine"), ["transformers", "lmdeploy"], key="chat_serve_engine",
                                  help=ui.t("chat.engine.help"))
            cb = c3.checkbox(ui.t("chat.batching"), key="chat_serve_cb", help=ui.t("chat.batching.help"))
            if st.button(ui.t("chat.start.go"), key="chat_serve_go", type="primary"):
                job_id = ui.submit("serve", {**pick["spec"], "engine": engine, "continuous_batching": cb})
                if job_id:
                    st.session_state[S_STARTING] = job_id

    ui.external_form("chat", st.session_state[S_EXTERNAL])

if st.session_state.get(S_STARTING):
    starting(st.session_state[S_STARTING])

choices = {ep["name"]: (ep, None) for ep in live}
choices.update({n: (x["endpoint"], x["key"]) for n, x in st.session_state[S_EXTERNAL].items()})
if not choices:
    st.stop()

# -- settings shared by Chat and Compare ---------------------------------------------------------------
with st.sidebar:
    st.subheader(ui.t("chat.settings"))
    system = st.text_area(ui.t("chat.system"), key="chat_system", height=80)
    temperature = st.slider(ui.t("chat.temperature"), 0.0, 2.0, 0.7, 0.05, key="chat_temperature")
    top_p = st.slider(ui.t("chat.top_p"), 0.05, 1.0, 0.9, 0.05, key="chat_top_p")
    max_tokens = st.number_input(ui.t("chat.max_tokens"), 1, 8192, 256, key="chat_max_tokens")
    stop_text = st.text_input(ui.t("chat.stop_words"), key="chat_stop_words", help=ui.t("chat.stop_words.help"))
settings = {"temperature": temperature, "top_p": top_p, "max_tokens": int(max_tokens),
            "stop": [s.strip() for s in stop_text.split(",") if s.strip()]}


def answer_kwargs(name: str, messages: list[dict], stats: dict | None = None) -> dict:
    ep, key = choices[name]
    return {"endpoint": ep, "messages": messages, "api_key": key, "stats": stats, "by": ui.user(), "home": ui.home(), **settings}


names = list(choices)
tab_chat, tab_compare = st.tabs([ui.t("chat.tab.chat"), ui.t("chat.tab.compare")])

# -- Chat ----------------------------------------------------------------------------------------------
with tab_chat:
    if st.session_state.get(keys.CHAT_PICK) not in names:
        st.session_state[keys.CHAT_PICK] = names[0]
    name = st.selectbox(ui.t("chat.endpoint"), names, key=keys.CHAT_PICK)
    if not choices[name][0].get("external"):
        with st.popover(ui.t("api.use_from_code"), icon=":material/code:"):
            st.markdown(ui.t("chat.from_code", url=ui.gateway_url(), model=name))
            st.page_link("pages/api.py", label=ui.t("nav.api"), icon=":material/key:")
    history = st.session_state[S_HISTORY]
    with st.container(key="chat_messages"):
        for m in history:
            show(m)
        slot = st.container()
    if st.session_state.get(S_ERROR):
        st.error(st.session_state.pop(S_ERROR))
    b = st.columns(5)
    regenerate = b[0].button(ui.t("chat.regenerate"), key="chat_regenerate",
                             disabled=not history or history[-1]["role"] != "assistant")
    if b[1].button(ui.t("chat.clear"), key="chat_clear", disabled=not history):
        st.session_state[S_HISTORY] = []
        st.rerun()
    b[2].download_button(ui.t("chat.export.md"), chat.transcript_markdown(history, choices[name][0], settings),
                         "chat.md", "text/markdown", key="chat_export_md", disabled=not history)
    b[3].download_button(ui.t("chat.export.json"), chat.transcript_json(history, choices[name][0], settings),
                         "chat.json", "application/json", key="chat_export_json", disabled=not history)
    prompt = st.chat_input(ui.t("chat.prompt"), key="chat_input")
    earlier = history[:-2] if regenerate else history
    if regenerate:
        prompt = history[-2]["content"]
    messages = chat.build_messages(earlier, prompt, system) if prompt is not None else None
    if messages:
        try:        # a refused prompt never joins the history
            chat.check_prompt(choices[name][0], messages, settings["max_tokens"])
        except chat.ChatError as e:
            st.error(ui.error_text(e))
            messages = None
    if messages:
        del history[len(earlier):]
        history.append({"role": "user", "content": prompt})
        with slot:
            with st.chat_message("user"):
                st.markdown(prompt)
            with st.chat_message("assistant"):
                b[4].button(ui.t("chat.stop"), key="chat_stop", type="primary")   # any click ends this run
                pending = st.session_state[S_PENDING] = {"kind": "chat", "texts": [""]}
                stats: dict = {}

                def deltas():
                    for d in chat.stream_chat(**answer_kwargs(name, messages, stats)):
                        pending["texts"][0] += d
                        yield d
                failed = False
                try:
                    text = st.write_stream(deltas())
                    note = ui.t("chat.stats", tokens=stats.get("tokens", 0), s=stats.get("seconds", 0),
                                ttft=stats.get("ttft_s") or 0)
                except chat.ChatError as e:
                    text, note, failed = e.partial, ui.error_text(e), True
                    st.error(note)
                st.session_state.pop(S_PENDING, None)
        text = text if isinstance(text, str) else "".join(text)
        if failed and not text:     # nothing came back (refused, unreachable...): drop the turn, show why
            history.pop()
            st.session_state[S_ERROR] = note
        else:
            history.append({"role": "assistant", "content": text, "note": note, "passages": stats.get("passages")})
        st.rerun()

# -- Compare: each column keeps its own history with its endpoint --------------------------------------
with tab_compare:
    c1, c2 = st.columns(2)
    for key in (keys.CHAT_CMP_LEFT, keys.CHAT_CMP_RIGHT):
        if st.session_state.get(key) not in names:
            st.session_state.pop(key, None)
    left = c1.selectbox(ui.t("chat.left"), names, key=keys.CHAT_CMP_LEFT)
    right = c2.selectbox(ui.t("chat.right"), names, key=keys.CHAT_CMP_RIGHT,
                         index=0 if keys.CHAT_CMP_RIGHT in st.session_state else min(1, len(names) - 1))
    pair, histories = [left, right], st.session_state[S_COMPARE]
    with st.form("chat_cmp_form", clear_on_submit=False):
        cmp_prompt = st.text_area(ui.t("chat.prompt"), key="chat_cmp_prompt", height=80)
        go = st.form_submit_button(ui.t("chat.compare.go"), type="primary")
    b = st.columns(5)
    if b[0].button(ui.t("chat.clear"), key="chat_cmp_clear", disabled=not any(histories)):
        st.session_state[S_COMPARE] = [[], []]
        st.rerun()
    notice = st.container()
    for err in st.session_state.pop(S_CMP_ERRORS, []):
        notice.error(err)
    boxes = []
    for i, col in enumerate(st.columns(2)):
        with col.container(key=f"compare_{'left' if i == 0 else 'right'}", border=True):
            st.markdown(f"**{pair[i]}**")
            for m in histories[i]:
                show(m)
            boxes.append(st.container())
    if go:
        sends = [chat.build_messages(histories[i], cmp_prompt, system) for i in range(2)]
        try:        # a refused prompt joins neither history
            for i in range(2):
                chat.check_prompt(choices[pair[i]][0], sends[i], settings["max_tokens"])
        except chat.ChatError as e:
            notice.error(ui.error_text(e))
            sends = None
    if go and sends:
        slots = []
        for i in range(2):
            histories[i].append({"role": "user", "content": cmp_prompt})
            with boxes[i]:
                show(histories[i][-1])
                with st.chat_message("assistant"):
                    slots.append(st.empty())
        b[1].button(ui.t("chat.stop"), key="chat_cmp_stop", type="primary")     # any click ends this run
        pending = st.session_state[S_PENDING] = {"kind": "compare", "texts": ["", ""]}
        failed, stats = [], [{}, {}]
        for i, delta, err in chat.stream_many([answer_kwargs(pair[i], sends[i], stats[i]) for i in range(2)]):
            if delta:
                pending["texts"][i] += delta
                slots[i].markdown(pending["texts"][i] + " ▌")
                continue
            text = err.partial if err else pending["texts"][i]
            pending["texts"][i] = None                          # this answer has ended
            if err and not text:        # nothing came back: drop this column's turn, show why
                histories[i].pop()
                failed.append(f"{pair[i]}: {ui.error_text(err)}")
            else:
                histories[i].append({"role": "assistant", "content": text, "note": ui.error_text(err) if err else "",
                                     "passages": stats[i].get("passages")})
        st.session_state.pop(S_PENDING, None)
        st.session_state[S_CMP_ERRORS] = failed
        st.rerun()
