"""Class console (instructors only; app.py registers it for them): the roster with each person's jobs,
stopping any job, the announcement every page shows, lab progress as a table and a CSV, and the student x lab
grid of lab checks (CSV, evidence, re-check everyone)."""
import pandas as pd
import streamlit as st

from backend.pipeline import classroom, labs
from backend.runtime import queue
from backend.core.paths import human_size
from backend.core.states import ACTIVE
from pages import ui

me = ui.user()
st.title(ui.t("nav.console"))

with st.container(key="console_announce", border=True):
    text = st.text_area(ui.t("console.announce"), value=classroom.announcement(home=ui.home()), max_chars=500,
                        key="console_announce_text")
    if st.button(ui.t("console.announce.post"), key="console_announce_post"):
        classroom.set_announcement(text, by=me, home=ui.home())
        st.rerun()


@st.fragment(run_every=3)
def roster() -> None:
    st.subheader(ui.t("console.roster"))
    rows = classroom.roster(by=me, home=ui.home())
    if not rows:
        st.info(ui.t("console.none"))
        return
    st.dataframe(pd.DataFrame([{
        ui.t("console.col.name"): r["name"], ui.t("console.col.role"): ui.t("auth.role." + r["role"]),
        ui.t("console.col.running"): r["running"], ui.t("console.col.queued"): r["queued"],
        ui.t("console.col.gpu_mem"): r["gpu_mem_gb"], ui.t("console.col.hours"): r["gpu_hours_today"],
        ui.t("console.col.disk"): human_size(r["disk_bytes"]), ui.t("console.col.last"): ui.when(r["last_activity"]),
    } for r in rows]), hide_index=True, width="stretch", key="console_roster")
    st.caption(ui.t("console.hours.help"))
    active = queue.list_jobs(states=list(ACTIVE) + ["queued"], by=me, home=ui.home())
    ui.cluster_gpus_line()
    if active:
        st.dataframe(ui.jobs_frame_cached(active, "console"), hide_index=True, width="stretch", key="console_jobs")
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        by_id = {j.id: j for j in active}
        pick = c1.selectbox(ui.t("console.cancel_pick"), list(by_id), key="console_pick",
                            format_func=lambda i: f"{i} · {by_id[i].owner} · {by_id[i].kind} · "
                                                  f"{ui.state_label(by_id[i].state)} {by_id[i].label}")
        if ui.cancel_button(c2, by_id[pick], ui.t("job.cancel"), "console_cancel", "primary"):
            st.rerun(scope="fragment")


roster()

st.subheader(ui.t("console.progress"))
progress = classroom.progress(by=me, home=ui.home())
st.dataframe(pd.DataFrame([{ui.t("console.col.name"): r["name"],
                            **{ui.t(f"console.step.{s}"): "✓" if r[s] else "·" for s in classroom.STEPS}}
                           for r in progress]), hide_index=True, width="stretch", key="console_progress")
st.download_button(ui.t("console.progress.csv"), classroom.progress_csv(by=me, home=ui.home()), file_name="lab-progress.csv",
                   mime="text/csv", key="console_csv")

st.subheader(ui.t("console.labs"))
lang = ui.lang()
lab_list, grid = labs.grid(by=me, home=ui.home())
cell = lambda c: ui.t(f"console.labs.cell.{c['state']}", when=ui.when(c["when"]))     # noqa: E731
st.dataframe(pd.DataFrame([{ui.t("console.col.name"): r["student"], **{lab.id: cell(r[lab.id]) for lab in lab_list}}
                           for r in grid]), hide_index=True, width="stretch", key="console_labs")
st.download_button(ui.t("console.labs.csv"), labs.grid_csv(by=me, home=ui.home()), file_name="lab-grid.csv", mime="text/csv",
                   key="console_labs_csv")
c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
lab_id = c1.selectbox(ui.t("console.labs.pick"), [lab.id for lab in lab_list], key="console_labs_pick",
                      format_func=lambda i: next(f"{i} · {lab.title(lang)}" for lab in lab_list if lab.id == i))
if lab_id and c2.button(ui.t("console.labs.recheck"), key="console_labs_recheck"):
    st.success(ui.t("console.labs.rechecked", n=len(labs.recheck_all(lab_id, by=me, home=ui.home()))))
passes = {f"{r['student']} · {lab.id}": r[lab.id]["job"] for r in grid for lab in lab_list
          if r[lab.id]["state"] == "passed"}
if passes:
    shown = st.selectbox(ui.t("console.labs.evidence"), list(passes), key="console_labs_evidence")
    signed = labs.evidence_of(passes[shown], by=me, home=ui.home())
    st.json(signed, expanded=False)
    if signed:
        st.download_button(ui.t("labs.evidence_html"), labs.evidence_html({"evidence": signed}, lang),
                           file_name=f"evidence-{shown.replace(' · ', '-')}.html", mime="text/html",
                           key="console_labs_evidence_html")
for problem in labs.problems(home=ui.home()):
    st.caption(ui.t("labs.hidden", error=ui.error_text(problem)))
