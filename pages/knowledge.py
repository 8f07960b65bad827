"""Knowledge bases: upload documents (or take the bundled demo, or a dataset's text column), build the index
with an ``index`` job, and serve a base with a model endpoint (``rag_serve``) to chat with it on the Chat page."""
import streamlit as st

from backend import chat, datasets, rag
from backend.paths import human_size
from pages import keys, ui

st.title(ui.t("nav.kb"))
st.caption(ui.t("kb.intro"))

# -- a new knowledge base ------------------------------------------------------------------------------
with st.container(key="kb_new", border=True):
    st.subheader(ui.t("kb.new"))
    name = st.text_input(ui.t("kb.name"), key="kb_name")
    source = st.radio(ui.t("kb.source"), ["upload", "demo", "dataset"], horizontal=True, key="kb_source",
                      format_func=lambda s: ui.t(f"kb.source.{s}"))
    files, dataset, field = [], "", "text"
    if source == "upload":
        files = st.file_uploader(ui.t("kb.files"), type=[s.lstrip(".") for s in rag.SUFFIXES] + ["zip"],
                                 accept_multiple_files=True, key="kb_files")
    elif source == "dataset":
        c1, c2 = st.columns(2)
        dataset = c1.selectbox(ui.t("kb.dataset"), [d["name"] for d in datasets.list_datasets(by=ui.user(), home=ui.home())],
                               key="kb_dataset")
        field = c2.text_input(ui.t("kb.text_field"), "text", key="kb_text_field")
    c1, c2 = st.columns(2)
    size = c1.number_input(ui.t("kb.chunk_size"), 32, 8192, 256, key="kb_chunk_size", help=ui.t("kb.chunk_size.help"))
    overlap = c2.number_input(ui.t("kb.chunk_overlap"), 0, 4096, 32, key="kb_chunk_overlap")
    if st.button(ui.t("kb.build"), key="kb_build", type="primary",
                 disabled=not name.strip() or (source == "upload" and not files)):
        spec = {"name": name.strip(), "chunk_size": int(size), "chunk_overlap": int(overlap)}
        if source == "upload":
            try:
                folder, problems = rag.save_upload([(f.name, f.getvalue()) for f in files or []], ui.owner(), home=ui.home())
            except rag.RagError as e:           # past the disk quota
                ui.error(e)
                st.stop()
            for problem in problems:
                st.warning(ui.error_text(problem))
            spec["folder"] = str(folder.relative_to(rag.docs_dir(home=ui.home())))
        elif source == "demo":
            spec["folder"] = rag.DEMO
        else:
            spec.update(dataset=dataset or "", text_field=field)
        job_id = ui.submit("index", spec)
        if job_id:
            st.session_state[keys.KB_JOB] = job_id
    if st.session_state.get(keys.KB_JOB):
        ui.job_view(st.session_state[keys.KB_JOB], show_spec=False)

# -- the knowledge bases this person may use, and serving one with a model -------------------------------
kbs = rag.list_kbs(by=ui.user(), home=ui.home())
models = [e["name"] for e in chat.endpoints(by=ui.user(), home=ui.home()) if e.get("engine") != "rag"]
with st.container(key="kb_list"):
    st.subheader(ui.t("kb.list"))
    if not kbs:
        st.caption(ui.t("kb.none"))
    for kb in kbs:
        c = st.columns([3, 4, 3, 2], vertical_alignment="center")
        c[0].markdown(f"**{kb.name}**")
        c[1].caption(ui.t("kb.facts", docs=kb.meta.get("documents", 0), chunks=kb.meta.get("chunks", 0),
                          size=human_size(kb.meta.get("size_bytes")), owner=kb.owner or "-"))
        model = c[2].selectbox(ui.t("kb.model"), models, key=f"kb_model_{kb.id}", label_visibility="collapsed",
                               placeholder=ui.t("kb.no_model"))
        if c[3].button(ui.t("kb.serve"), key=f"kb_serve_{kb.id}", disabled=not model):
            if ui.submit("rag_serve", {"kb": kb.name, "endpoint": model}):
                st.page_link("pages/chat.py", label=ui.t("kb.to_chat"), icon=":material/chat:")
    if kbs and not models:
        st.caption(ui.t("kb.start_model"))
