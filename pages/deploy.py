"""Deploy page: quantise a model, then compare its variants side by side (disk, memory, speed, score)."""
import pandas as pd
import streamlit as st

from backend.pipeline import chat, deploy
from backend.core.paths import human_size
from pages import ui

st.title(ui.t("nav.deploy"))
st.caption(ui.t("deploy.intro"))
names = deploy.models(by=ui.user(), home=ui.home())
if not names:
    st.info(ui.t("chat.no_models"))
    st.stop()
model = st.selectbox(ui.t("deploy.model"), names, key="deploy_model")

with st.expander(ui.t("deploy.quantize")), st.container(key="deploy_quantize"):
    c = st.columns(4)
    method = c[0].selectbox(ui.t("deploy.method"), ["bnb_nf4", "awq_w4a16"], key="deploy_method",
                            format_func=lambda m: ui.t(f"deploy.method.{m}"))
    spec = {"model": model, "method": method}
    if method == "awq_w4a16":
        spec |= {"calib_dataset": c[1].selectbox(ui.t("deploy.calib"), ["wikitext2", "c4", "ptb", "pileval"]),
                 "calib_samples": c[2].number_input(ui.t("deploy.samples"), 1, 4096, 128),
                 "group_size": c[3].selectbox(ui.t("deploy.group"), [128, 64, 32, 256])}
    if st.button(ui.t("deploy.quantize.go"), key="deploy_quantize_go"):
        ui.submit("quantize", spec)

rows = deploy.table(model, by=ui.user(), home=ui.home())
base = rows[0]["figures"] if rows else {}


def ratio(row: dict, key: str) -> str:
    v, b = row["figures"].get(key), base.get(key)
    if v is None:
        return "–"
    return f"{v}" + (f" ({v / b:.2f}×)" if b and row is not rows[0] else "")


frame = pd.DataFrame([{
    ui.t("deploy.col.model"): r["model"], ui.t("deploy.col.method"): r["method"],
    ui.t("deploy.col.disk"): human_size(r["weights"]) + (
        f" ({r['weights'] / rows[0]['weights']:.2f}×)" if r is not rows[0] and rows[0]["weights"] else ""),
    ui.t("deploy.col.memory"): ratio(r, "memory_gb"), ui.t("deploy.col.ttft"): ratio(r, "ttft_ms"),
    ui.t("deploy.col.tps1"): ratio(r, "tps_1"), ui.t("deploy.col.tpsn"): ratio(r, "tps_8"),
    ui.t("deploy.col.kv"): f"{r['figures']['kv_cache_gb']} GB" if r["figures"].get("kv_cache_gb") else "–",
    ui.t("deploy.col.score"): r["score"] if r["score"] is not None else "–",
} for r in rows])
with st.container(key="deploy_table"):
    st.dataframe(frame, hide_index=True, width="stretch")
    st.caption(ui.t("deploy.kv_note"))
    if rows and rows[0]["eval_run"]:
        st.page_link("pages/evaluate.py", label=ui.t("deploy.eval_link", run=rows[0]["eval_run"]))

for r in rows:
    c = st.columns([3, 2, 5], vertical_alignment="center")
    c[0].markdown(f"**{r['model']}**")
    if r["endpoint"]:
        if c[1].button(ui.t("deploy.measure"), key=f"deploy_measure_{r['model']}"):
            with st.spinner(ui.t("deploy.measuring", model=r["model"])):
                try:
                    deploy.measure_variant(r["model"], by=ui.user(), home=ui.home())
                except chat.ChatError as e:
                    st.error(str(e))
                else:
                    st.rerun()
        c[2].caption(ui.t("deploy.served_by", endpoint=r["endpoint"]))
    elif c[1].button(ui.t("deploy.start"), key=f"deploy_start_{r['model']}"):
        ui.submit("serve", {"model": r["model"], "continuous_batching": True})
