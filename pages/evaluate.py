"""Evaluate page: models x datasets with OpenCompass, progress, results, base-vs-adapter delta, answers."""
import pandas as pd
import streamlit as st

from backend.pipeline import evaluate as ev, rag_eval
from backend.runtime import queue
from pages import keys, ui

st.title(ui.t("nav.evaluate"))

# -- the engine --------------------------------------------------------------------------------
ready = ev.engine_ready(home=ui.home())
pending = ev.engine_install_job(home=ui.home())
if pending:
    st.info(ui.t("eval.engine_pending", id=pending))
elif not ready:
    st.warning(ui.t("eval.engine_missing"))
    if st.button(ui.t("eval.engine_install"), key="eval_install"):
        st.info(ui.t("eval.engine_pending", id=ev.install_engine(owner=ui.owner(), home=ui.home())))

# -- a new run ---------------------------------------------------------------------------------
with st.expander(ui.t("eval.new"), expanded=not ev.runs(by=ui.user(), home=ui.home())), st.container(key="eval_form"):
    models = {m["name"]: m for m in ev.model_choices(by=ui.user(), home=ui.home())}
    usable_models = [n for n, m in models.items() if m["ref"]]
    picked_models = st.multiselect(ui.t("eval.models"), usable_models, key=keys.EVAL_MODELS,
                                   format_func=lambda n: f"{n} ({ui.t('eval.kind.' + models[n]['kind'])}"
                                   + (f" · {models[n]['url']})" if models[n]["kind"] == "endpoint" else ")"))
    ext_url = ext_model = ext_key = ext_tok = ""
    if st.toggle(ui.t("eval.external"), key="eval_ext"):
        c = st.columns(4)
        ext_url = c[0].text_input(ui.t("eval.external.url"), placeholder="https://api.example.com/v1", key="eval_ext_url")
        ext_model = c[1].text_input(ui.t("eval.external.model"), key="eval_ext_model")
        ext_key = c[2].text_input(ui.t("eval.external.key"), type="password", key="eval_ext_key")
        ext_tok = c[3].selectbox(ui.t("eval.external.tokenizer"), [""] + [n for n, m in models.items()
                                 if m["kind"] == "model"], key="eval_ext_tokenizer", format_func=lambda n: n or "-")
    data = {d["name"]: d for d in ev.dataset_choices(by=ui.user(), home=ui.home())}
    picked_data = st.multiselect(ui.t("eval.datasets"), [n for n, d in data.items() if d["ref"]], key="eval_datasets",
                                 format_func=lambda n: f"{n} ({data[n]['format'].upper()})")
    unusable = [f"{n}: {ui.error_text(d['problem'])}" for n, d in data.items() if not d["ref"]]
    unusable += [f"{n}: {ui.error_text(m['problem'])}" for n, m in models.items() if not m["ref"]]
    if unusable:
        with st.expander(ui.t("eval.not_usable", items=len(unusable))):
            st.markdown("\n".join(f"- {u}" for u in unusable))
    standard = {s["name"]: s for s in ev.standard_choices(home=ui.home())}
    picked_std = st.multiselect(ui.t("eval.standard"), list(standard), key="eval_standard",
                                format_func=lambda n: n + (" ⚠" if standard[n]["missing"] else ""))
    if standard:
        st.caption(ui.t("eval.data_cache", path=ev.data_cache(home=ui.home())))
    c = st.columns(5)
    limit = c[0].number_input(ui.t("eval.limit"), 0, 100_000, 20, key="eval_limit")
    max_out_len = c[1].number_input(ui.t("eval.max_out_len"), 1, 32768, 64, key="eval_max_out_len")
    batch_size = c[2].number_input(ui.t("eval.batch_size"), 1, 1024, 8, key="eval_batch_size")
    gpus = c[3].number_input(ui.t("eval.gpus"), 0, 8, 0, key="eval_gpus")
    name = c[4].text_input(ui.t("eval.name"), key="eval_name")
    if st.button(ui.t("eval.submit"), key="eval_submit", type="primary"):
        spec = {"models": [models[n]["ref"] for n in picked_models]
                + ([ev.external_ref(ext_url, ext_model, ext_tok, home=ui.home())] if ext_url.strip() else []),
                "datasets": [dict(data[n]["ref"], limit=int(limit)) for n in picked_data]
                + [{"name": n, "config": n, "limit": int(limit)} for n in picked_std],
                "max_out_len": int(max_out_len), "batch_size": int(batch_size), "gpus": int(gpus), "name": name.strip()}
        try:
            job_id = ev.submit(spec, owner=ui.owner(), install_engine_if_missing=True, api_key=ext_key.strip(), home=ui.home())
        except queue.SubmitError as e:
            ui.error(e)
        else:
            st.session_state[keys.EVAL_RUN] = job_id
            st.success(ui.t("job.queued_as", id=job_id))

st.page_link("pages/knowledge.py", label=ui.t("eval.rag_link"), icon=":material/menu_book:")

# -- past runs and results ---------------------------------------------------------------------
st.header(ui.t("eval.runs"))
runs = ev.runs(by=ui.user(), home=ui.home())
if not runs:
    st.caption(ui.t("eval.no_runs"))
    st.stop()
labels = {r["job_id"]: f"#{r['job_id']} {r['name'] or ''} · {ui.state_label(r['state'])} · "
                       f"{', '.join(r['models'])} × {', '.join(r['datasets'])}" for r in runs}
ids = list(labels)
current = st.session_state.get(keys.EVAL_RUN)
job_id = st.selectbox(ui.t("eval.pick_run"), ids, index=ids.index(current) if current in ids else 0,
                      format_func=labels.get, key="eval_pick")
res = ev.result(job_id, by=ui.user(), home=ui.home())
if res is None:
    ui.job_view(job_id)
    st.stop()

with st.container(key="eval_results"):
    st.subheader(ui.t("eval.results"))
    wide = pd.DataFrame(ev.table(res))
    st.dataframe(wide, hide_index=True, key="eval_table")
    long = pd.DataFrame(res["table"]).dropna(subset=["score"])
    if not long.empty:
        long["dataset_metric"] = long["dataset"] + " · " + long["metric"]
        st.bar_chart(long, x="dataset_metric", y="score", color="model", stack=False)
    st.download_button(ui.t("eval.export"), ev.to_csv(res), f"eval-{job_id}.csv", "text/csv", key="eval_csv")

deltas = ev.deltas(res)
if deltas:
    with st.container(key="eval_delta"):
        st.subheader(ui.t("eval.delta"))
        st.dataframe(pd.DataFrame(deltas), hide_index=True)

if "summary" in res:                  # with and without retrieval: each question's two answers side by side
    with st.container(key="eval_items"):
        st.subheader(ui.t("eval.items"))
        st.dataframe(pd.DataFrame(rag_eval.side_by_side(res)), hide_index=True,
                     column_config={"question": st.column_config.TextColumn(width="medium")})
    with st.expander(ui.t("job.title", id=job_id, kind=rag_eval.KIND)):
        ui.job_view(job_id, show_spec=False)
    st.stop()

with st.container(key="eval_items"):
    st.subheader(ui.t("eval.items"))
    c = st.columns(3)
    model = c[0].selectbox(ui.t("eval.item_model"), [None] + [m["name"] for m in res["models"]], key="eval_item_model",
                           format_func=lambda x: x or "*")
    dataset = c[1].selectbox(ui.t("eval.item_dataset"), [None] + sorted({t["dataset"] for t in res["table"]}),
                             key="eval_item_dataset", format_func=lambda x: x or "*")
    wrong = c[2].toggle(ui.t("eval.wrong_only"), key="eval_wrong")
    st.dataframe(pd.DataFrame(ev.items(res, model, dataset, wrong)), hide_index=True,
                 column_config={"prompt": st.column_config.TextColumn(width="large")})
    st.download_button(ui.t("eval.export_items"), ev.to_csv(res, "items"), f"eval-{job_id}-items.csv", "text/csv",
                       key="eval_items_csv")
with st.expander(ui.t("job.title", id=job_id, kind="evaluate")):
    ui.job_view(job_id, show_spec=False)        # log, spec via clone, retry (no nested expander)
