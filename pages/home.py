"""Home: the pipeline, My labs (steps, checks, evidence), the machine's hardware, the queue at a glance."""
import streamlit as st

from backend.core import defaults, errors
from backend.pipeline import labs
from backend.runtime import placement, queue
from backend.core.job import Job
from backend.core.states import JobState
from pages import keys, ui

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


def lab_card(row: dict, me, lang: str) -> None:
    """One lab: its state, goal, steps (page link, "Start this step"), "Check my lab" and the newest outcome."""
    lab = row["lab"]
    with st.container(border=True, key=f"lab-{lab.id}"):
        st.markdown(f"**{lab.title(lang)}** · `{ui.t('labs.state.' + row['state'])}`")
        st.caption(ui.t("labs.camp", camp=lab.camp(lang)))
        st.write(lab.goal(lang))
        params = {p.id: st.text_input(p.label(lang), p.default, key=f"lab-{lab.id}-{p.id}") for p in lab.params}
        for i, (step, done) in enumerate(zip(lab.steps, row["done"])):
            c1, c2, c3 = st.columns([5, 2, 2], vertical_alignment="center")
            mark = "✓" if done else "→" if i == row["next"] else "○"
            c1.markdown(f"{mark} {i + 1}. {step.title(lang)}")
            c2.page_link(f"pages/{step.page}.py", label=ui.t("labs.open_page", page=ui.t(f"nav.{step.page}")))
            if (step.kind or step.action) and c3.button(ui.t("labs.start_step"), key=f"lab-{lab.id}-step-{i}"):
                try:
                    made = labs.start_step(lab.id, i, me, params, home=ui.home())
                    st.session_state[keys.LAB_NOTE] = ui.t("labs.step_started", id=made) if isinstance(made, int) \
                        else ui.t("labs.dataset_made", name=made.name)
                    st.rerun(scope="app")
                except errors.UserError as e:
                    ui.error(e)
        st.caption(ui.t("labs.next", step=lab.steps[row["next"]].title(lang)) if row["next"] is not None
                   else ui.t("labs.all_done"))
        if st.button(ui.t("labs.check"), key=f"lab-{lab.id}-check", type="primary", disabled=row["checking"]):
            try:
                labs.submit_check(lab.id, me, home=ui.home())
                st.rerun(scope="app")
            except errors.UserError as e:
                ui.error(e)
        lab_outcome(row, lang)


def lab_outcome(row: dict, lang: str) -> None:
    latest, passed = row["latest"], row["passed"]
    if row["checking"]:
        st.info(ui.t("labs.checking", id=latest["job"]))
    elif latest and not latest["passed"]:
        if latest["result"] is None:
            st.error(ui.t("labs.check_error", error=latest["error"] or latest["state"]))
        else:
            with st.container(key=f"lab-{row['lab'].id}-missing"):
                st.warning(ui.t("labs.failed", when=ui.when(latest["when"])))
                for c in latest["result"]["checks"]:
                    if not c["passed"]:
                        st.markdown("- " + labs.as_error(c["problem"]).text(lang))
    if passed:
        with st.container(key=f"lab-{row['lab'].id}-passed"):
            st.success(ui.t("labs.passed", when=ui.when(passed["when"])))
            for c in passed["result"]["checks"]:
                seen = c["seen"]
                for q, a in (seen.get("answers") or {}).items():
                    st.markdown(f"> **{q}** → {a}")
                for k in ("answer", "score", "memory_gb", "final_loss"):
                    if k in seen:
                        st.markdown(f"- {k}: `{seen[k]}`")
                if seen.get("gpu_only"):
                    st.caption(seen["gpu_only"][lang])
            with st.expander(ui.t("labs.saw")):
                st.json(passed["result"]["checks"], expanded=False)
            c1, c2 = st.columns(2)
            c1.download_button(ui.t("labs.evidence"), labs.evidence_json(passed["result"]),
                               file_name=f"evidence-{row['lab'].id}-{passed['student']}.json",
                               mime="application/json", key=f"lab-{row['lab'].id}-evidence")
            c2.download_button(ui.t("labs.evidence_html"), labs.evidence_html(passed["result"], lang),
                               file_name=f"evidence-{row['lab'].id}-{passed['student']}.html",
                               mime="text/html", key=f"lab-{row['lab'].id}-evidence-html")


def my_labs() -> list[dict]:
    me, lang = ui.user(), ui.lang()
    rows = labs.status(me, home=ui.home())
    if note := st.session_state.get(keys.LAB_NOTE):           # kept until the next step (reruns don't lose it)
        st.success(note)
    if not rows:
        st.caption(ui.t("labs.none"))
    for row in rows:
        lab_card(row, me, lang)
    return rows


st.subheader(ui.t("labs.title"))
pace = keys.list_every("labs")


def labs_fragment() -> None:
    """Polls while a check or a step's job is on its way; reruns the page once when that changes."""
    rows = my_labs()
    now = 2.0 if any(r["checking"] or r["busy"] for r in rows) else None
    if now != st.session_state.get(pace):
        st.session_state[pace] = now
        st.rerun(scope="app")


st.fragment(labs_fragment, run_every=st.session_state.get(pace))()


def status() -> list[Job]:
    left, right = st.columns(2)
    with left.container(key="hardware"):
        st.subheader(ui.t("home.hardware"))
        if not ui.cluster_gpus_line():          # on a cluster, this machine's GPUs don't run the jobs
            gpus = placement.gpus()
            for g in gpus:
                st.progress(min(1.0, g.used_gb / g.total_gb),
                            text=ui.t("home.gpu_line", index=g.index, name=g.name, used=g.used_gb, total=g.total_gb))
            if not gpus:
                st.info(ui.t("home.cpu_only", slots=defaults.setting("CPU_SLOTS")))
        live = queue.live_workers(home=ui.home())
        if live:
            st.success(ui.t("home.worker_ok", pid=live[0]["pid"]))
        else:
            st.warning(ui.t("home.no_worker"))
    with right.container(key="queue"):
        st.subheader(ui.t("home.queue"))
        counts = queue.counts(home=ui.home())
        mcols = st.columns(4)
        for c, state in zip(mcols, (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED)):
            c.metric(ui.state_label(state), counts.get(state, 0))
        recent = queue.list_jobs(limit=8, by=ui.user(), home=ui.home())
        if recent:
            st.caption(ui.t("home.recent"))
            st.dataframe(ui.jobs_frame_cached(recent, "home"), hide_index=True, width="stretch")
        else:
            st.caption(ui.t("jobs.none"))
    return recent


ui.list_fragment(status, "home")
