"""Knowledge bases: upload documents (or take the bundled demo, or a dataset's text column), build the index
with an ``index`` job, serve a base with a model endpoint (``rag_serve``) to chat with it on the Chat page, and
evaluate a question set with and without retrieval (``rag_eval``), the two side by side."""
import pandas as pd
import streamlit as st

from backend.core import defaults
from backend.pipeline import chat, rag, rag_eval
from backend.workspace import datasets
from backend.core.paths import human_size
from pages import keys, ui

st.title(ui.t("nav.kb"))
st.caption(ui.t("kb.intro"))

# -- a new knowledge base ------------------------------------------------------------------------------
home = defaults.home()
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
        dataset = c1.selectbox(ui.t("kb.dataset"), [d.name for d in datasets.list_datasets(by=ui.user(), home=ui.home())],
                               key="kb_dataset")
        field = c2.text_input(ui.t("kb.text_field"), "text", key="kb_text_field")
    c1, c2, c3 = st.columns(3)
    embedding = c3.selectbox(ui.t("kb.embedding"), [""] + [e.name for e in rag.embedders(home, ui.user())],
                             key="kb_embedding", format_func=lambda n: ui.t("kb.embedding.dense", name=n) if n
                             else ui.t("kb.embedding.bm25"))
    hybrid = c3.checkbox(ui.t("kb.hybrid"), True, key="kb_hybrid", help=ui.t("kb.hybrid.help")) if embedding else False
    size = c1.number_input(ui.t("kb.chunk_size"), 32, 8192, 256, key="kb_chunk_size", help=ui.t("kb.chunk_size.help"))
    overlap = c2.number_input(ui.t("kb.chunk_overlap"), 0, 4096, 32, key="kb_chunk_overlap")
    if st.button(ui.t("kb.build"), key="kb_build", type="primary",
                 disabled=not name.strip() or (source == "upload" and not files)):
        spec = {"name": name.strip(), "chunk_size": int(size), "chunk_overlap": int(overlap),
                "embedding_model": embedding or "", "hybrid": hybrid}
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
rerankers = [e.name for e in rag.rerankers(home=ui.home(), by=ui.user())]
with st.container(key="kb_list"):
    st.subheader(ui.t("kb.list"))
    if not kbs:
        st.caption(ui.t("kb.none"))
    for kb in kbs:
        c = st.columns([3, 4, 3, 2], vertical_alignment="center")
        c[0].markdown(f"**{kb.name}**")
        c[1].caption(ui.t("kb.facts", docs=kb.meta.get("documents", 0), chunks=kb.meta.get("chunks", 0),
                          retrieval=ui.t(f"kb.retrieval.{kb.meta.get('retrieval', 'bm25')}"),
                          size=human_size(kb.meta.get("size_bytes")), owner=kb.owner or "-"))
        model = c[2].selectbox(ui.t("kb.model"), models, key=f"kb_model_{kb.id}", label_visibility="collapsed",
                               placeholder=ui.t("kb.no_model"))
        reranker = c[2].selectbox(ui.t("kb.reranker"), [""] + rerankers, key=f"kb_reranker_{kb.id}",
                                  label_visibility="collapsed", format_func=lambda n: n or ui.t("kb.no_reranker"),
                                  ) if rerankers else ""
        if c[3].button(ui.t("kb.serve"), key=f"kb_serve_{kb.id}", disabled=not model):
            if ui.submit("rag_serve", {"kb": kb.name, "endpoint": model, "reranker": reranker}):
                st.page_link("pages/chat.py", label=ui.t("kb.to_chat"), icon=":material/chat:")
    if kbs and not models:
        st.caption(ui.t("kb.start_model"))

# -- a question set asked with and without retrieval (rag_eval), the two side by side ------------------------
with st.container(key="kb_eval", border=True):
    st.subheader(ui.t("kb.eval"))
    st.caption(ui.t("kb.eval.intro"))
    served = {e["name"]: e for e in rag_eval.kb_endpoints(home, ui.user())}
    if not served:
        st.caption(ui.t("kb.eval.no_endpoint"))
    else:
        c = st.columns([4, 4, 2])
        endpoint = c[0].selectbox(ui.t("kb.eval.endpoint"), list(served), key="kb_eval_endpoint",
                                  format_func=lambda n: n if n == f"{served[n].get('kb')} + {served[n].get('upstream')}"
                                  else f"{n} ({served[n].get('kb')} + {served[n].get('upstream')})")
        qa = rag_eval.qa_datasets(home, ui.user())
        dataset = c[1].selectbox(ui.t("kb.eval.dataset"), qa, key="kb_eval_dataset",
                                 index=qa.index("rag_demo_qa") if "rag_demo_qa" in qa else 0)
        limit = c[2].number_input(ui.t("kb.eval.limit"), 1, 1000, 50, key="kb_eval_limit")
        if st.button(ui.t("kb.eval.run"), key="kb_eval_run", type="primary", disabled=not dataset):
            job_id = ui.submit("rag_eval", {"endpoint": endpoint, "dataset": dataset, "limit": int(limit)})
            if job_id:
                st.session_state[keys.KB_EVAL_RUN] = job_id
    runs = rag_eval.runs(home, ui.user())
    if runs:
        ids = [r["job_id"] for r in runs]
        current = st.session_state.get(keys.KB_EVAL_RUN)
        job_id = st.selectbox(ui.t("kb.eval.pick"), ids, index=ids.index(current) if current in ids else 0,
                              key="kb_eval_pick", format_func=lambda i: next(
                                  f"#{r['job_id']} {r['endpoint']} × {r['dataset']} · {ui.state_label(r['state'])}"
                                  for r in runs if r["job_id"] == i))
        res = rag_eval.result(job_id, home, ui.user())
        if res is None:
            ui.job_view(job_id, show_spec=False)
        else:
            s = res["summary"]
            c = st.columns(3)
            c[0].metric(ui.t("kb.eval.alone", model=res["model"]), f"{s['alone_accuracy']}%")
            c[1].metric(ui.t("kb.eval.with"), f"{s['rag_accuracy']}%",
                        delta=round(s["rag_accuracy"] - s["alone_accuracy"], 2))
            c[2].metric(ui.t("kb.eval.hit"), f"{s['hit_rate']}%")
            st.caption(ui.t("kb.eval.fixed", fixed=s["fixed"], broke=s["broke"], n=s["questions"]))
            with st.container(key="kb_eval_items"):
                cols = ("question", "answer", "alone", "with_retrieval", "hit", "passage")
                st.dataframe(pd.DataFrame(rag_eval.side_by_side(res)), hide_index=True, column_config={
                    c: st.column_config.TextColumn(ui.t(f"kb.eval.col.{c}"), width="medium" if c in cols[:4] else "small")
                    for c in cols})
