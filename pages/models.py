"""Models: the registry (table, details, delete, shortcuts), downloads as jobs, the bundled model, imports."""
import pandas as pd
import streamlit as st

from backend.access import ownership, users
from backend.core import paths
from backend.pipeline import export
from backend.workspace import models, remote_code
from pages import keys, ui

S_JOB = keys.MODELS_JOB             # the download job this session follows
SOURCES = {"huggingface": "Hugging Face", "modelscope": "ModelScope", "openxlab": "OpenXLab"}
TOKEN_ENV = {"huggingface": "HF_TOKEN", "modelscope": "MODELSCOPE_API_TOKEN"}

st.title(ui.t("nav.models"))




def _params(n) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e6 else f"{n / 1e3:.0f} K"


def secrets_for(source: str, token: str) -> dict | None:
    token = token.strip()
    if not token:
        return None
    if source == "openxlab":
        ak, _, sk = token.partition(":")
        return {"OPENXLAB_AK": ak, "OPENXLAB_SK": sk}
    return {TOKEN_ENV[source]: token}


def open_page(page: str, name: str, session_key: str, value) -> None:
    st.session_state[session_key] = value
    st.switch_page(page, query_params={"model": name})


tab_reg, tab_dl, tab_imp = st.tabs([ui.t("models.tab.registry"), ui.t("models.tab.download"), ui.t("models.tab.import")])

with tab_dl:
    with st.container(key="models_download"):
        source = st.selectbox(ui.t("models.source"), list(SOURCES), format_func=SOURCES.get, key="dl_source")
        options = [c["key"] for c in models.CATALOG] + [""]
        by_key = {c["key"]: c for c in models.CATALOG}
        pick = st.selectbox(ui.t("models.catalog"), options, key="dl_catalog",
                            format_func=lambda k: ui.t("models.catalog.line", title=by_key[k]["title"],
                                                      size_gb=by_key[k]["size_gb"], memory_gb=by_key[k]["memory_gb"]) if k
                            else ui.t("models.catalog.other"))
        c1, c2 = st.columns(2)
        repo_id = c1.text_input(ui.t("models.repo_id"), value=by_key[pick][source] if pick else "", key=f"dl_repo_{pick}_{source}")
        name = c2.text_input(ui.t("models.name"), value=pick or "", key=f"dl_name_{pick}")
        c1, c2 = st.columns(2)
        revision = c1.text_input(ui.t("models.revision"), key="dl_revision", disabled=source == "openxlab")
        patterns = c2.text_input(ui.t("models.patterns"), key="dl_patterns", disabled=source == "openxlab")
        token = st.text_input(ui.t("models.token"), type="password", key="dl_token", help=ui.t("models.token.help"))
        if st.button(ui.t("models.download.go"), type="primary", key="dl_go"):
            spec = {"source": source, "repo_id": repo_id, "name": name,
                    "revision": "" if source == "openxlab" else revision,
                    "allow_patterns": [] if source == "openxlab" else [p for p in patterns.split(",") if p.strip()]}
            job_id = ui.submit("download", spec, secrets=secrets_for(source, token))
            if job_id:
                st.session_state[S_JOB] = job_id
    st.divider()
    if st.button(ui.t("models.bundled", name=models.BUNDLED_NAME), key="dl_bundled", help=ui.t("models.bundled.help")):
        job_id = ui.submit("download", {"source": "bundled"})
        if job_id:
            st.session_state[S_JOB] = job_id
    if st.session_state.get(S_JOB):
        ui.job_view(st.session_state[S_JOB])

with tab_imp:
    with st.form("models_import", border=False):
        path = st.text_input(ui.t("models.import.path"), key="imp_path")
        imp_name = st.text_input(ui.t("models.name"), key="imp_name")
        if st.form_submit_button(ui.t("models.import.go")):
            try:
                row = models.import_folder(path.strip(), imp_name.strip() or None, owner=ui.owner(), home=ui.home())
                st.success(ui.t("models.import.done", name=row.name))
            except models.ModelError as e:
                ui.error(e)

with tab_reg:
    rows = models.list_models(by=ui.user(), home=ui.home())
    if not rows:
        st.info(ui.t("models.none"))
    else:
        with st.container(key="models_table"):
            st.dataframe(pd.DataFrame([{
                ui.t("models.col.name"): m["name"], ui.t("models.col.source"): m.get("source", ""),
                ui.t("models.col.id"): m.get("id", ""), ui.t("models.col.arch"): m.get("architecture") or "-",
                ui.t("models.col.params"): _params(m.get("params")), ui.t("models.col.dtype"): m.get("dtype") or "-",
                ui.t("models.col.size"): paths.human_size(m.get("size_bytes")),
                ui.t("models.col.context"): m.get("context_length") or "-",
                ui.t("models.col.template"): "✓" if m.get("chat_template") else "-",
                ui.t("models.col.adapters"): m["adapters"],
            } for m in rows]), hide_index=True, width="stretch")
        names = [m["name"] for m in rows]
        picked = st.selectbox(ui.t("models.detail"), names, key="models_pick",
                              index=names.index(st.query_params["model"]) if st.query_params.get("model") in names else 0)
        d = models.detail(picked, by=ui.user(), home=ui.home())
        ui.share_toggle(models.TYPE, ownership.get(models.TYPE, picked, ui.user(), ui.home()), "models_shared")
        meta = d["meta"]
        st.caption(ui.t("models.lineage", source=meta.get("source", ""), id=meta.get("id", ""),
                        revision=meta.get("revision") or "-", when=ui.when(meta.get("when")), job=meta.get("job_id") or "-"))
        if not d["files"]:
            st.warning(ui.t("models.missing_files"))
        is_gguf = meta.get("format") == "gguf"
        if is_gguf:
            st.caption(ui.t("models.gguf.note"))
        c = st.columns(4)
        if c[0].button(ui.t("models.chat"), key="models_chat"):
            ui.chat_if_served(picked)
            open_page("pages/chat.py", picked, keys.CHAT_MODEL, picked)
        if not is_gguf and c[1].button(ui.t("models.finetune"), key="models_finetune"):
            open_page("pages/finetune.py", picked, keys.FT_MODEL, picked)
        if c[2].button(ui.t("models.evaluate"), key="models_evaluate"):
            open_page("pages/evaluate.py", picked, keys.EVAL_MODELS, [picked])
        if c[3].button(ui.t("models.delete"), key="models_delete"):
            st.session_state[keys.MODELS_CONFIRM] = picked
        if not is_gguf:
            with st.container(key="models_export"):
                c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
                outtype = c1.selectbox(ui.t("models.export.outtype"), export.OUTTYPES, key="models_export_outtype",
                                       help=ui.t("models.export.help"))
                if c2.button(ui.t("models.export.go"), key="models_export_go"):
                    job_id = ui.submit("export", {"model": picked, "outtype": outtype})
                    if job_id:
                        st.session_state[keys.MODELS_EXPORT_JOB] = job_id
        with st.expander(ui.t("models.push")), st.container(key="models_push"):
            c0, c1, c2 = st.columns([1, 2, 1], vertical_alignment="bottom")
            hub = c0.selectbox(ui.t("models.push.hub"), ["huggingface", "modelscope"], format_func=SOURCES.get,
                               key="models_push_hub")
            repo = c1.text_input(ui.t("models.push.repo"), key=f"models_push_repo_{picked}",
                                 placeholder=f"your-name/{picked}")
            private = c2.checkbox(ui.t("models.push.private"), value=True, key="models_push_private")
            hf_token = st.text_input(ui.t("models.push.token"), type="password", key="models_push_token",
                                     help=ui.t("models.push.token.help"))
            if st.button(ui.t("models.push.go"), key="models_push_go"):
                job_id = ui.submit("push", {"type": "model", "source": picked, "repo_id": repo, "private": private,
                                            "hub": hub}, secrets=secrets_for(hub, hf_token))
                if job_id:
                    st.session_state[keys.MODELS_EXPORT_JOB] = job_id
        trusted = bool(meta.get("trust_remote_code")) and remote_code.allowed(d["path"], ui.home())   # for this code
        if meta.get("trust_remote_code") and not trusted:
            st.warning(ui.t("err.model.code_changed", model=picked))
        remote = st.checkbox(ui.t("models.trust_remote_code"), value=trusted,
                             key=f"models_trust_{picked}", help=ui.t("models.trust_remote_code.help"),
                             disabled=not users.may_change("", ui.user(), home=ui.home()))
        if remote != trusted:
            models.set_trust_remote_code(picked, remote, by=ui.user(), home=ui.home())
        if st.session_state.get(keys.MODELS_CONFIRM) == picked:
            with st.container(key="models_confirm_box", border=True):
                st.warning(ui.t("models.delete.confirm", name=picked))
                if st.button(ui.t("models.delete.yes"), type="primary", key="models_delete_yes"):
                    st.session_state.pop(keys.MODELS_CONFIRM, None)
                    try:
                        models.delete(picked, by=ui.user(), home=ui.home())
                    except models.ModelError as e:
                        ui.error(e)
                    else:
                        st.success(ui.t("models.deleted", name=picked))
                        st.rerun()
        if st.session_state.get(keys.MODELS_EXPORT_JOB):
            ui.job_view(st.session_state[keys.MODELS_EXPORT_JOB], show_spec=False)
        with st.expander(ui.t("models.config")):
            st.json(d["config"], expanded=False)
        with st.expander(ui.t("models.generation_config")):
            st.json(d["generation_config"], expanded=False)
        with st.expander(ui.t("models.files")):
            st.dataframe(pd.DataFrame(d["files"]), hide_index=True, width="stretch")
