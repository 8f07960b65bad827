"""Datasets: list, upload, import; open one as a paged table (never the whole file), search, row
detail as chat bubbles; validate, convert, split; token statistics as a job."""
import json

import pandas as pd
import streamlit as st

from backend.workspace import dataset_info, image_text
from backend.workspace import datasets as ds
from backend.core import defaults, paths
from backend.runtime import logs
from backend.workspace import models as models_
from backend.workspace.dataset_view import open_view
from pages import keys, ui

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
CELL_CHARS = 300
SS = keys.DS_STATE
INFO_REPORT = "ds_info_report"            # what the last dataset_info.json import made and skipped

st.title(ui.t("nav.datasets"))


def state(name: str) -> dict:
    return st.session_state.setdefault(SS, {}).setdefault(name, {})


# -- list, upload, import --------------------------------------------------------------------
entries = ds.list_datasets(by=ui.user(), home=ui.home())
names = [e.name for e in entries]
with st.container(key="ds_list"):
    st.dataframe(pd.DataFrame([{
        ui.t("ds.col.name"): e.name, ui.t("ds.col.format"): e.meta.get("format", ""),
        ui.t("ds.col.rows"): e.meta.get("rows", 0), ui.t("ds.col.size"): paths.human_size(e.meta.get("size", 0)),
        ui.t("ds.col.source"): ui.t("ds.source." + e.meta.get("source", "upload")),
    } for e in entries]), hide_index=True, width="stretch", height=min(400, 38 + 35 * len(entries)))

c_up, c_imp = st.columns(2)
with c_up.expander(ui.t("ds.upload"), expanded=INFO_REPORT in st.session_state):
    report = st.session_state.pop(INFO_REPORT, None)
    with st.container(key="ds_info_report"):
        for made in (report or {}).get("imported", []):
            st.success(ui.t("ds.info.imported", **made))
        for reason in (report or {}).get("skipped", []):
            st.warning(ui.error_text(reason))
    with st.form("ds_upload_form", clear_on_submit=True):
        ups = st.file_uploader(ui.t("ds.upload.file", mb=defaults.setting("UPLOAD_MAX_MB")),
                               type=[e.lstrip(".") for e in ds.EXTENSIONS] + ["zip"], key="ds_upload",
                               max_upload_size=defaults.setting("UPLOAD_MAX_MB"), accept_multiple_files=True)
        if st.form_submit_button(ui.t("ds.upload.save")) and ups:
            failed, opened = False, None
            for up in sorted(ups, key=lambda f: f.name == "dataset_info.json"):   # its data files first
                try:
                    if up.name == "dataset_info.json":
                        made = st.session_state[INFO_REPORT] = dataset_info.import_dataset_info(up,
                                                                                                 owner=ui.owner(), home=ui.home())
                        opened = next((m["name"] for m in made["imported"]), opened)
                    elif up.name.lower().endswith(".zip"):      # a dataset file with its images
                        opened = image_text.save_zip(up.name, up, defaults.home(), owner=ui.owner()).name
                    else:
                        opened = ds.save_upload(up.name, up, owner=ui.owner(), home=ui.home()).name
                except ds.DatasetError as e:
                    ui.error(e)
                    failed = True
            if opened:                     # open what was added (the picker below isn't drawn yet)
                st.query_params["ds"] = st.session_state["ds_pick"] = opened
            if not failed:
                st.rerun()
    if defaults.setting("IMPORT_DIRS"):        # an image-text dataset folder (JSON + images) from an import folder
        with st.form("ds_folder_form", clear_on_submit=True):
            folder = st.text_input(ui.t("ds.folder", dirs=defaults.setting("IMPORT_DIRS")), key="ds_folder")
            if st.form_submit_button(ui.t("ds.folder.go")) and folder.strip():
                try:
                    made = image_text.import_folder(folder.strip(), None, defaults.home(), owner=ui.owner())
                except ds.DatasetError as e:
                    ui.error(e)
                else:
                    st.query_params["ds"] = st.session_state["ds_pick"] = made.name
                    st.rerun()
with c_imp.expander(ui.t("ds.import")):
    with st.form("ds_import_form"):
        source = st.selectbox(ui.t("ds.import.source"), ["huggingface", "modelscope", "url"], key="ds_imp_source")
        repo = st.text_input(ui.t("ds.import.id"), key="ds_imp_id", placeholder="owner/name")
        c1, c2, c3 = st.columns(3)
        new_name = c1.text_input(ui.t("ds.import.name"), key="ds_imp_name")
        split_name = c2.text_input(ui.t("ds.import.split"), value="train", key="ds_imp_split")
        max_rows = c3.number_input(ui.t("ds.import.max_rows"), min_value=0, value=0, key="ds_imp_rows")
        if st.form_submit_button(ui.t("ds.import.go")) and repo.strip():
            spec = {"source": source, "id": repo.strip(), "name": new_name.strip(), "split": split_name.strip(),
                    "max_rows": int(max_rows)}
            job_id = ui.submit("dataset_import", spec)
            if job_id:
                st.page_link("pages/jobs.py", label=ui.t("ds.import.follow", id=job_id), query_params={"job": job_id})

if not names:
    st.stop()
picked = st.query_params.get("ds")
name = st.selectbox(ui.t("ds.open"), names, index=names.index(picked) if picked in names else 0, key="ds_pick")
if st.query_params.get("ds") != name:
    st.query_params["ds"] = name
entry = next(e for e in entries if e.name == name)

# -- one dataset -----------------------------------------------------------------------------
try:
    path = ds.resolve(name, home=ui.home())
    view = open_view(path, home=ui.home())
except ds.DatasetError as e:
    ui.error(e)
    st.stop()
fmt = ds.detect_format(path)
mine = state(name)
st.subheader(name)
ui.share_toggle("dataset", entry, f"ds_shared_{name}")
st.markdown(f"{ui.t('ds.format')}: **{ui.t('ds.fmt.' + fmt)}** · {ui.t('ds.rows', n=len(view))} · "
            f"{paths.human_size(path.stat().st_size)} · `{path.name}`", help=ui.t("ds.format.help"))

c1, c2, c3 = st.columns([3, 1, 2])
query = c1.text_input(ui.t("ds.search"), key=f"ds_q_{name}", placeholder=ui.t("ds.search.hint"))
fields = sorted({k for r in view.page(0) for k in (r.get("record") or {})})
field = c2.selectbox(ui.t("ds.filter.field"), [""] + fields, key=f"ds_ff_{name}",
                     format_func=lambda f: f or ui.t("ds.filter.any"))
value = c3.text_input(ui.t("ds.filter.value"), key=f"ds_fv_{name}", disabled=not field)


@st.cache_data(max_entries=16, show_spinner=False)
def matches(p: str, mtime: float, q: str, f: str, v: str):
    return open_view(p, home=ui.home()).search(q, {f: v} if f and v else None)


rows_idx = None
if query or (field and value):
    rows_idx = matches(str(path), path.stat().st_mtime, query, field, value)
    st.caption(ui.t("ds.matches", n=len(rows_idx)))
total = len(view) if rows_idx is None else len(rows_idx)
size = defaults.DATASET_PAGE_ROWS
pages = max(1, -(-total // size))

page_key = keys.ds_page(name)
st.session_state.setdefault(page_key, 1)
st.session_state[page_key] = min(st.session_state[page_key], pages)


def turn(by: int) -> None:
    st.session_state[page_key] = min(pages, max(1, st.session_state[page_key] + by))


def jump_to(key: str) -> None:
    row = int(st.session_state[key] or 0)
    if 1 <= row <= len(view):
        st.session_state[page_key] = (row - 1) // size + 1
        mine["row"] = row - 1


with st.container(key="ds_pager"):
    b1, b2, b3, b4 = st.columns([1, 1, 3, 3], vertical_alignment="bottom")
    b1.button("◀", key="ds_prev", disabled=st.session_state[page_key] <= 1, on_click=turn, args=(-1,))
    b2.button("▶", key="ds_next", disabled=st.session_state[page_key] >= pages, on_click=turn, args=(1,))
    b3.number_input(ui.t("ds.page", pages=pages), min_value=1, max_value=pages, key=page_key)
    if rows_idx is None:
        b4.number_input(ui.t("ds.jump"), min_value=0, max_value=max(1, len(view)), value=0, key=f"ds_jump_{name}",
                        on_change=jump_to, args=(f"ds_jump_{name}",))
page_no = st.session_state[page_key] - 1
ids = (range(page_no * size, min(total, (page_no + 1) * size)) if rows_idx is None
       else [int(i) for i in rows_idx[page_no * size:(page_no + 1) * size]])
rows = [view.row(i) for i in ids]


def cell(v):
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):     # a conversation: "role: text"
        v = " ⏎ ".join(f"{m.get('role', m.get('from', ''))}: {m.get('content', m.get('value', m.get('input', '')))}"
                       for m in v)
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


table = pd.DataFrame([{"#": r["row"] + 1, ui.t("ds.col.line"): r["line"],
                       **({k: cell(v) for k, v in r["record"].items()} if "record" in r
                          else {ui.t("ds.col.error"): ui.error_text(r["error"])})} for r in rows])
with st.container(key="ds_table"):
    event = st.dataframe(table, hide_index=True, width="stretch", height=min(420, 40 + 35 * len(rows)),
                         key=f"ds_grid_{name}",
                         on_select="rerun", selection_mode="single-row")
    st.caption(ui.t("ds.showing", first=page_no * size + 1 if rows else 0, last=page_no * size + len(rows), total=total))
if entry.meta.get("images"):               # an image-text dataset: the page's rows as thumbnails
    thumbs = [(r["row"] + 1, f) for r in rows if "record" in r for f in image_text.thumbnails(path, r["record"])[:1]]
    if thumbs:
        with st.container(key="ds_thumbs"):
            st.image([str(f) for _, f in thumbs], caption=[f"#{n}" for n, _ in thumbs], width=72)
sel = event.selection.rows if event and event.selection else []
if sel:
    mine["row"] = rows[sel[0]]["row"]
if rows and mine.get("row") not in ids:
    mine["row"] = rows[0]["row"]


# -- row detail ------------------------------------------------------------------------------
def show_images(record: dict) -> None:
    if any(record.get(f) for f in image_text.IMAGE_FIELDS):       # an image-text row: its dataset folder's images
        files = image_text.thumbnails(path, record)
        if files:
            st.image([str(f) for f in files], caption=[f.name for f in files], width=320)
        return
    for k, v in record.items():
        for item in (v if isinstance(v, list) else [v]):
            if not isinstance(item, str):
                continue
            if item.startswith("data:image/") or (item.lower().endswith(IMAGE_EXT) and item.startswith("http")):
                st.image(item, caption=k, width=320)
            elif item.lower().endswith(IMAGE_EXT) and (img := ds.row_image(path, item)):
                st.image(str(img), caption=k, width=320)


if rows and mine.get("row") is not None:
    row = view.row(mine["row"])
    with st.container(key="ds_detail", border=True):
        st.markdown(f"**{ui.t('ds.detail', row=row['row'] + 1, line=row['line'])}**")
        if "error" in row:
            ui.error(row["error"])
        else:
            record = row["record"]
            row_fmt = ds.record_format(record)
            if row_fmt in ds.TRAIN_FORMATS:
                try:
                    with_images = any(record.get(f) for f in image_text.IMAGE_FIELDS)
                    for m in (image_text.to_chat(record, row_fmt)[0] if with_images else ds.to_messages(record, row_fmt)):
                        with st.chat_message(m["role"], avatar={"system": "⚙️"}.get(m["role"])):
                            st.markdown(m["content"])
                            if m.get("loss") is False:
                                st.caption(ui.t("ds.no_loss"))
                except ValueError as e:
                    st.warning(ui.t("ds.bad_row", reason=ui.error_text(e)))
            show_images(record)
            with st.expander(ui.t("ds.raw")):
                st.json(record)

# -- actions ---------------------------------------------------------------------------------
t_val, t_conv, t_split, t_stats, t_del = st.tabs([ui.t("ds.validate"), ui.t("ds.convert"), ui.t("ds.split"),
                                                  ui.t("ds.stats"), ui.t("ds.delete")])
with t_val:
    if st.button(ui.t("ds.validate.go"), key="ds_validate"):
        with st.spinner(ui.t("ds.validate.running")):
            mine["validation"] = image_text.validate(path, lang=ui.lang())     # with its images, if it has any
    report = mine.get("validation")
    if report:
        (st.success if report["ok"] else st.error)(report["summary"])
        if report["errors"]:
            st.dataframe(pd.DataFrame(report["errors"]).rename(columns={"line": ui.t("ds.col.line"),
                                                                        "reason": ui.t("ds.col.reason")}),
                         hide_index=True, width="stretch", key="ds_val_errors")
            if report["truncated"]:
                st.caption(ui.t("ds.validate.truncated", n=len(report["errors"])))

with t_conv:
    if fmt not in ds.TRAIN_FORMATS:
        st.info(ui.t("ds.convert.only_train", fmt=fmt))
    else:
        c1, c2 = st.columns(2)
        target = c1.selectbox(ui.t("ds.convert.to"), [f for f in ds.TRAIN_FORMATS if f != fmt],
                              format_func=lambda f: ui.t("ds.fmt." + f), key="ds_conv_to")
        out_name = c2.text_input(ui.t("ds.convert.name"), key="ds_conv_name", placeholder=f"{path.stem}-{target}")
        if st.button(ui.t("ds.convert.go"), key="ds_convert"):
            try:
                out = ds.convert(path, target, out_name.strip() or None, owner=ui.owner(), home=ui.home())
            except ds.DatasetError as e:
                ui.error(e)
            else:
                st.success(ui.t("ds.convert.done", name=out["name"], rows=out["rows"], skipped=out["skipped"]))
                if out["errors"]:
                    st.dataframe(pd.DataFrame([{ui.t("ds.col.line"): e["line"], ui.t("ds.col.reason"): ui.error_text(e["reason"])}
                                               for e in out["errors"]]), hide_index=True, width="stretch")

with t_split:
    c1, c2 = st.columns(2)
    frac = c1.slider(ui.t("ds.split.fraction"), 0.01, 0.5, 0.1, key="ds_split_frac")
    seed = c2.number_input(ui.t("ds.split.seed"), value=42, step=1, key="ds_split_seed")
    if st.button(ui.t("ds.split.go"), key="ds_split"):
        try:
            out = ds.split(path, frac, int(seed), owner=ui.owner(), home=ui.home())
        except ds.DatasetError as e:
            ui.error(e)
        else:
            st.success(ui.t("ds.split.done", train=out["train"]["name"], n_train=out["train"]["rows"],
                            val=out["val"]["name"], n_val=out["val"]["rows"]))

with t_stats:
    models = models_.names(home=ui.home(), by=ui.user())
    c1, c2 = st.columns(2)
    model = c1.selectbox(ui.t("ds.stats.model"), [""] + models, key="ds_stats_model",
                         format_func=lambda m: m or ui.t("ds.stats.chars"))
    max_len = c2.number_input(ui.t("ds.stats.max_length"), min_value=16, value=2048, step=256, key="ds_stats_max")
    if st.button(ui.t("ds.stats.go"), key="ds_stats"):
        job_id = ui.submit("dataset_stats", {"dataset": name, "model": model, "max_length": int(max_len)})
        if job_id:
            mine["stats_job"] = job_id
    if mine.get("stats_job"):
        job_id = mine["stats_job"]
        ui.job_view(job_id, show_spec=False)
        res = logs.result(job_id, home=ui.home())
        if res and res.get("ok") and res.get("histogram", {}).get("counts"):
            h = res["histogram"]
            st.markdown(f"**{ui.t('ds.stats.histogram', unit=res['unit'])}**")
            edges = h["edges"]
            st.bar_chart(pd.DataFrame({ui.t("ds.stats.rows"): h["counts"]},
                                      index=[f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in range(len(h["counts"]))]))
            c1, c2, c3, c4 = st.columns(4)
            c1.metric(ui.t("ds.stats.rows"), res["rows"])
            c2.metric(ui.t("ds.stats.over", n=res["max_length"]), res["over_max"])
            c3.metric(ui.t("ds.stats.duplicates"), res["duplicates"])
            c4.metric(ui.t("ds.stats.p90"), res["lengths"]["p90"])
            st.caption(ui.t("ds.stats.languages") + ": " + ", ".join(f"{k} {v}" for k, v in res["languages"].items()))
            if res["missing"]:
                st.caption(ui.t("ds.stats.missing") + ": " + ", ".join(f"{k} {v}" for k, v in res["missing"].items()))
            if res.get("images"):
                im = res["images"]
                st.caption(ui.t("it.stats", images=im["images"], per_row=", ".join(f"{k}: {v}" for k, v in im["per_row"].items()),
                                size=paths.human_size(im["bytes"]), w=im["width"], h=im["height"], bad=im["bad"]))

with t_del:
    if entry.meta.get("source") == "sample":
        st.info(ui.t("ds.delete.sample"))
    elif st.button(ui.t("ds.delete.go", name=name), key="ds_delete", type="primary"):
        try:
            ds.delete(name, by=ui.user(), home=ui.home())
        except ds.DatasetError as e:
            ui.error(e)
        else:
            st.query_params.pop("ds", None)
            st.rerun()
