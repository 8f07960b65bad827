"""Agent: pick an endpoint and tools, ask, and watch the agent job's steps stream in (thought, tool call,
observation, answer); follow-ups continue the conversation; Stop; export the trace; the files its
interpreter wrote. The page never runs the agent: agent jobs do (jobs/agent.py), backend/pipeline/agent.py answers."""
import streamlit as st

from backend.access import users
from backend.pipeline import agent
from backend.runtime import queue
from backend.runtime.live import Viewer
from pages import keys, ui

st.title(ui.t("nav.agent"))
st.caption(ui.t("agent.intro"))
st.session_state.setdefault(keys.AGENT_EXTERNAL, {})
me = ui.user()

# -- where to ask, with which tools ---------------------------------------------------------------------
added = ui.external_form("agent", st.session_state[keys.AGENT_EXTERNAL])
if added:
    st.session_state["agent_target"] = added
targets = {ep["name"]: (ep, "") for ep in agent.endpoints(by=me, home=ui.home())}
targets.update({n: (x["endpoint"], x["key"]) for n, x in st.session_state[keys.AGENT_EXTERNAL].items()})
c1, c2 = st.columns([3, 2])
target = c1.selectbox(ui.t("agent.endpoint"), list(targets), key="agent_target")
if not targets:
    st.info(ui.t("agent.no_endpoints"))
tools = c2.multiselect(ui.t("agent.tools"), ["python"], default=["python"], key="agent_tools",
                       format_func=lambda x: ui.t("agent.tool." + x))

# -- the open run: ?run=<id> ----------------------------------------------------------------------------
def open_run(job_id: int | None) -> None:
    if job_id:
        st.query_params["run"] = str(job_id)
    else:
        st.query_params.pop("run", None)


mine = agent.runs(by=me, home=ui.home())
current = queue.parse_job_id(st.query_params.get("run"))
c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
if mine:
    ids = [j.id for j in mine]
    prompts = {j.id: j.spec["prompt"][:60] for j in mine}
    picked = c1.selectbox(ui.t("agent.runs"), ids, index=ids.index(current) if current in ids else None,
                          key=f"agent_runs_{current}", format_func=lambda i: ui.t("agent.run", id=i, prompt=prompts[i]))
    if picked and picked != current:
        open_run(picked)
        st.rerun()
c2.button(ui.t("agent.new"), key="agent_new", on_click=open_run, args=(None,))
try:
    job = agent.run(current, by=me, home=ui.home()) if current else None
except (KeyError, users.Refused):
    job = None


def step(s: dict) -> None:
    if s["type"] == "model":
        with st.chat_message("assistant", avatar=":material/psychology:"):
            st.caption(ui.t("agent.step.thought"))
            st.markdown(agent.thought(s["text"]) or " ")
    elif s["type"] == "tool":
        with st.chat_message("tool", avatar=":material/terminal:"):
            st.caption(ui.t("agent.step.tool", tool=s["tool"]))
            st.code(s["code"], language="python")
            st.caption(ui.t("agent.step.observation"))
            st.code(s["output"] or " ", language=None)
            if s.get("error"):
                st.warning(s["error"])
    else:
        with st.chat_message("assistant"), st.container(key="agent_answer"):
            st.caption(ui.t("agent.step.answer"))
            st.markdown(s["text"])


def follow(job_id: int, every: float | None) -> None:
    """The run as it goes: its steps from the job's events (read only when they changed: backend.runtime.live)."""
    view = st.session_state.setdefault(keys.job_view(job_id), Viewer(job_id, ui.home()))
    view.poll()
    if view.interval() != every:              # started or ended: the page reruns once at the new pace
        st.rerun(scope="app")
    with st.container(key="agent_steps"):
        for s in view.events.steps:
            step(s)
    c1, c2, c3, c4 = st.columns([3, 1, 2, 2], vertical_alignment="center")
    c1.markdown(ui.t("agent.state", id=job_id, state=ui.state_label(view.job.state)))
    if not view.job.finished and ui.cancel_button(c2, view.job, ui.t("agent.stop"), "agent_stop", "primary"):
        view.poll()
    if view.job.state.unsuccessful and view.job.error_message:
        st.error(ui.t("job.error", cls=view.job.error_class or "crash", message=view.job.error_message))
    record = agent.trace(job_id, by=me, home=ui.home())
    c3.download_button(ui.t("agent.export.json"), agent.trace_json(record), f"agent-{job_id}.json",
                       "application/json", key="agent_export_json")
    c4.download_button(ui.t("agent.export.md"), agent.trace_markdown(record), f"agent-{job_id}.md",
                       "text/markdown", key="agent_export_md")
    made = agent.files(job_id, home=ui.home())
    if made:
        with st.container(key="agent_files", border=True):
            name = st.selectbox(ui.t("agent.files"), made, index=None, key=f"agent_file_{job_id}")
            try:
                data = agent.file_bytes(job_id, name, by=me, home=ui.home()) if name else None   # read only once opened
            except OSError:
                data = None
                st.warning(ui.t("agent.file_unreadable", name=name))
            if data is not None and name.lower().endswith(agent.IMAGES):
                st.image(data, caption=name, width=520)
            elif data is not None:
                st.download_button(name, data, name.rsplit("/", 1)[-1], key="agent_file_download")


if job:
    for m in job.spec.get("history", []) + [{"role": "user", "content": job.spec["prompt"]}]:
        with st.chat_message(m["role"]):
            st.markdown(m["content"])
    view = st.session_state.setdefault(keys.job_view(job.id), Viewer(job.id, ui.home()))
    view.poll()
    every = view.interval()
    st.fragment(follow, run_every=every)(job.id, every)
    if not job.finished:
        st.caption(ui.t("agent.wait"))

prompt = st.chat_input(ui.t("agent.ask"), key="agent_prompt", disabled=not targets or bool(job and not job.finished))
if prompt:
    ep, secret = targets[target]
    try:
        new = agent.ask(prompt, by=me, tools=tuple(tools), after=job.id if job else None, home=ui.home(),
                        **({"url": ep["url"], "model": ep["model"], "key": secret} if ep.get("external")
                           else {"endpoint": ep["name"]}))
    except (queue.SubmitError, users.Refused) as e:
        ui.error(e)
    else:
        open_run(new)
        st.rerun()
