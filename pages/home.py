"""Home: the pipeline, the machine's hardware, the queue at a glance."""
import streamlit as st

from backend import defaults, queue, resources
from backend.states import JobState
from pages import ui

st.title(ui.t("app.title"))
st.write(ui.t("home.intro"))

st.subheader(ui.t("home.pipeline"))
steps = [("datasets", ":material/dataset:"), ("models", ":material/deployed_code:"), ("finetune", ":material/tune:"), ("evaluate", ":material/leaderboard:"), ("chat", ":material/chat:"),
         ("xcomposer", ":material/image:")]
cols = st.columns(len(steps))
for col, (name, icon) in zip(cols, steps):
    with col.container(border=True, key=f"step-{name}"):
        st.page_link(f"pages/{name}.py", label=ui.t(f"nav.{name}"), icon=icon)
        st.caption(ui.t(f"home.step.{name}"))


def status() -> list[dict]:
    left, right = st.columns(2)
    with left.container(key="hardware"):
        st.subheader(ui.t("home.hardware"))
        if not ui.cluster_gpus_line():          # on a cluster, this machine's GPUs don't run the jobs
            gpus = resources.gpus()
            for g in gpus:
                st.progress(min(1.0, g.used_gb / g.total_gb),
                            text=ui.t("home.gpu_line", index=g.index, name=g.name, used=g.used_gb, total=g.total_gb))
            if not gpus:
                st.info(ui.t("home.cpu_only", slots=defaults.setting("CPU_SLOTS")))
        live = queue.live_workers()
        if live:
            st.success(ui.t("home.worker_ok", pid=live[0]["pid"]))
        else:
            st.warning(ui.t("home.no_worker"))
    with right.container(key="queue"):
        st.subheader(ui.t("home.queue"))
        counts = queue.counts()
        mcols = st.columns(4)
        for c, state in zip(mcols, (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED)):
            c.metric(ui.state_label(state), counts.get(state, 0))
        recent = queue.list_jobs(limit=8, by=ui.user())
        if recent:
            st.caption(ui.t("home.recent"))
            st.dataframe(ui.jobs_frame_cached(recent, "home"), hide_index=True, width="stretch")
        else:
            st.caption(ui.t("jobs.none"))
    return recent


ui.list_fragment(status, "home")
