"""Jobs: every job with filters; one job's live view (``?job=<id>`` survives reloads and links)."""
import streamlit as st

from backend.runtime import queue
from backend.kinds import catalog as kinds
from backend.core.states import JobState
from pages import ui

st.title(ui.t("nav.jobs"))


PER_PAGE = 50


def job_table() -> list[dict]:
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
    states = c1.multiselect(ui.t("jobs.filter.state"), [s.value for s in JobState], format_func=ui.state_label,
                            key="f_state")
    kind = c2.selectbox(ui.t("jobs.filter.kind"), [""] + sorted(kinds.KINDS), key="f_kind")
    owner = c3.text_input(ui.t("jobs.filter.owner"), key="f_owner")
    page = int(c4.number_input(ui.t("jobs.page"), min_value=1, value=1, step=1, key="f_page"))
    jobs, total = queue.jobs_page(page, PER_PAGE, states=states or None, kind=kind or None,
                                  owner=owner.strip() or None, by=ui.user(), home=ui.home())
    if not jobs:
        st.info(ui.t("jobs.none"))
        return jobs
    st.caption(ui.t("jobs.count", n=total, page=min(page, -(-total // PER_PAGE)), pages=-(-total // PER_PAGE)))
    event = st.dataframe(ui.jobs_frame_cached(jobs), hide_index=True, width="stretch", key="jobs_table",
                         on_select="rerun", selection_mode="single-row")
    rows = event.selection.rows if event and event.selection else []
    if rows:
        picked = str(jobs[rows[0]]["id"])
        if st.query_params.get("job") != picked:
            st.query_params["job"] = picked
            st.rerun(scope="app")
    return jobs


ui.list_fragment(job_table, "jobs")

selected = queue.parse_job_id(st.query_params.get("job"))
with st.form("open_job", border=False):
    c1, c2 = st.columns([1, 5])
    typed = c1.text_input(ui.t("jobs.open"), value=str(selected or ""), key="open_job_id")
    if c2.form_submit_button(ui.t("jobs.open")) and queue.parse_job_id(typed):
        st.query_params["job"] = str(queue.parse_job_id(typed))
        st.rerun()

if selected:
    st.divider()
    ui.job_view(selected)
