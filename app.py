"""Lab Workbench: the Streamlit entry point and the one page registry."""
import streamlit as st

from backend.runtime import queue
from pages import auth, keys, ui

st.set_page_config(page_title="Lab Workbench", page_icon="🧪", layout="wide")
if problem := queue.workspace_problem(ui.home(), lang=ui.lang()):
    st.error(problem)
    st.stop()
allowed = auth.gate()          # class mode: False while it shows the login page

PAGES = {
    ui.t("nav.section.pipeline"): [
        st.Page("pages/home.py", title=ui.t("nav.home"), icon=":material/home:", url_path="home", default=True),
        st.Page("pages/datasets.py", title=ui.t("nav.datasets"), icon=":material/dataset:", url_path="datasets"),
        st.Page("pages/models.py", title=ui.t("nav.models"), icon=":material/deployed_code:", url_path="models"),
        st.Page("pages/finetune.py", title=ui.t("nav.finetune"), icon=":material/tune:", url_path="finetune"),
        st.Page("pages/evaluate.py", title=ui.t("nav.evaluate"), icon=":material/leaderboard:", url_path="evaluate"),
        st.Page("pages/knowledge.py", title=ui.t("nav.kb"), icon=":material/menu_book:", url_path="knowledge"),
        st.Page("pages/chat.py", title=ui.t("nav.chat"), icon=":material/chat:", url_path="chat"),
        st.Page("pages/deploy.py", title=ui.t("nav.deploy"), icon=":material/rocket_launch:", url_path="deploy"),
        st.Page("pages/agent.py", title=ui.t("nav.agent"), icon=":material/smart_toy:", url_path="agent"),
        st.Page("pages/xcomposer.py", title=ui.t("nav.xcomposer"), icon=":material/image:", url_path="xcomposer"),
    ],
    ui.t("nav.section.system"): [
        st.Page("pages/jobs.py", title=ui.t("nav.jobs"), icon=":material/list_alt:", url_path="jobs"),
        st.Page("pages/api.py", title=ui.t("nav.api"), icon=":material/key:", url_path="api"),
    ],
}
if allowed and auth.class_mode() and ui.user().instructor:      # the class console: instructors only
    PAGES[ui.t("nav.section.system")].append(
        st.Page("pages/console.py", title=ui.t("nav.console"), icon=":material/school:", url_path="console"))

# navigation is declared even on the login page, so a link to /jobs?job=3 still opens that job after login
nav = st.navigation(PAGES, position="sidebar" if allowed else "hidden")
if not allowed:
    st.stop()
ui.sidebar()
if st.session_state.get(keys.USER) is not None:
    with st.sidebar:
        auth.signed_in()
auth.announcement()            # the instructor's class announcement, on every page
nav.run()
