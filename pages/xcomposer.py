"""XComposer: image chat and article composition with an image-text endpoint (a `vlm` job).

The page never loads a model: the `vlm` job does (backend/pipeline/vlm.py talks to it, backend/pipeline/compose.py holds
the compose steps and drafts). Uploads are checked (not an image, corrupt, too large) and kept in the
workspace gallery before anything is sent.
"""
import streamlit as st

from backend.core import defaults
from backend.pipeline import compose, finetune, vlm
from backend.runtime import queue
from pages import keys, ui

S_HISTORY, S_STARTING = keys.XC_HISTORY, keys.XC_STARTING

st.title(ui.t("nav.xcomposer"))
st.session_state.setdefault(S_HISTORY, [])


@st.fragment(run_every=1.0)
def starting(job_id: int) -> None:
    """A vlm job coming up: its state until its endpoint is live."""
    job = queue.get(job_id, home=ui.home(), by=ui.user())
    if any(e["job_id"] == job_id for e in vlm.endpoints(by=ui.user(), home=ui.home())):
        st.session_state.pop(S_STARTING, None)
        st.rerun(scope="app")
    with st.container(key="xc_starting", border=True):
        st.markdown(ui.t("xc.starting", id=job_id, state=ui.state_label(job.state)))
        if job.state.unsuccessful:
            st.error(ui.t("job.error", cls=job.error_class or "crash", message=job.error_message or ""))
            if st.button(ui.t("xc.dismiss"), key="xc_dismiss"):
                st.session_state.pop(S_STARTING, None)
                st.rerun(scope="app")


live = vlm.endpoints(by=ui.user(), home=ui.home())
with st.container(key="xc_endpoint", border=True):
    if live:
        names = [e["name"] for e in live]
        pick = st.selectbox(ui.t("xc.endpoint"), names, key="xc_pick")
        ep = live[names.index(pick)]
        st.caption(ui.t("xc.endpoint.info", model=ep["model"], device=ep["device"], images=ep["max_images"]))
    else:
        ep = None
        st.info(ui.t("xc.none"))
    startable = vlm.startable(ui.home(), ui.user())
    if not startable:
        st.warning(ui.t("xc.no_models"))
        st.page_link("pages/models.py", label=ui.t("xc.to_models"), icon=":material/deployed_code:")
    cols = st.columns([3, 1])
    model = cols[0].selectbox(ui.t("xc.model"), startable, key="xc_model")
    if cols[1].button(ui.t("xc.start"), key="xc_start", disabled=not model):
        job_id = ui.submit("vlm", {"model": model})      # refusals (no GPU, not image-text...) show here
        if job_id:
            st.session_state[S_STARTING] = job_id
    tuned = [a.name for a in finetune.adapters(by=ui.user(), home=ui.home()) if a.meta.get("modality") == "image_text"]
    if tuned:                                             # an image-text fine-tune's adapter on its base model
        cols = st.columns([3, 1])
        adapter = cols[0].selectbox(ui.t("xc.adapter"), tuned, key="xc_adapter")
        if cols[1].button(ui.t("xc.start_adapter"), key="xc_start_adapter"):
            job_id = ui.submit("vlm", {"adapter": adapter})
            if job_id:
                st.session_state[S_STARTING] = job_id
if st.session_state.get(S_STARTING):
    starting(st.session_state[S_STARTING])

with st.sidebar:
    max_new = st.slider(ui.t("xc.max_new"), 8, 1024, 128, key="xc_max_new")
    temperature = st.slider(ui.t("xc.temperature"), 0.0, 1.5, 0.0, 0.05, key="xc_temperature")
    top_p = st.slider(ui.t("xc.top_p"), 0.05, 1.0, 0.9, 0.05, key="xc_top_p")
    beams = st.number_input(ui.t("xc.beams"), 1, 8, 1, key="xc_beams")
    if st.button(ui.t("xc.clear"), key="xc_clear"):
        st.session_state[S_HISTORY] = []
sampling = {"max_new_tokens": max_new, "temperature": temperature, "top_p": top_p, "num_beams": beams}

# images: uploads (checked, then kept in the gallery) and picks from the gallery
uploads = st.file_uploader(ui.t("xc.upload"), accept_multiple_files=True, key="xc_upload",
                           max_upload_size=defaults.setting("UPLOAD_MAX_MB"))
images, bad = [], False
for f in uploads or []:
    try:
        images.append(compose.add_to_gallery(f.name, f.getvalue(), owner=ui.owner(), home=ui.home()))
    except (vlm.VLMError, compose.ComposeError) as e:
        st.error(ui.t("xc.bad_image", message=ui.error_text(e)))
        bad = True
picked = st.multiselect(ui.t("xc.gallery"), [p for p in compose.gallery(by=ui.user(), home=ui.home()) if p not in images], key="xc_gallery",
                        help=ui.t("xc.gallery.help"))
images += picked
if images:
    st.image([str(compose.resolve(p, by=ui.user(), home=ui.home())) for p in images], width=120, caption=[p.rsplit("/", 1)[-1] for p in images])

mode = st.radio(ui.t("xc.mode"), ["chat", "compose", "compare"], format_func=lambda m: ui.t("xc.mode." + m),
                index=int("draft" in st.query_params), horizontal=True, key="xc_mode")


def image_chat() -> None:
    with st.container(key="xc_chat"):
        for m in st.session_state[S_HISTORY]:
            with st.chat_message(m["role"]):
                if m.get("images"):
                    st.image([str(compose.resolve(p, by=ui.user(), home=ui.home())) for p in m["images"]], width=120)
                st.markdown(m["content"])
    prompt = st.chat_input(ui.t("xc.ask"), key="xc_input", disabled=ep is None or bad)
    if prompt and ep is not None:
        history = st.session_state[S_HISTORY]
        user = {"role": "user", "content": prompt, "images": images}
        with st.chat_message("user"):
            if images:
                st.image([str(compose.resolve(p, by=ui.user(), home=ui.home())) for p in images], width=120)
            st.markdown(prompt)
        with st.chat_message("assistant"), st.container(key="xc_answer"):
            text = shown(lambda: vlm.stream(ep, [{**m, "images": [compose.resolve(p, by=ui.user(), home=ui.home()) for p in m.get("images") or []]}
                                                 for m in history + [user]], by=ui.user(), home=ui.home(), **sampling))
            if text is not None:
                history += [user, {"role": "assistant", "content": text}]


def shown(answer) -> str | None:
    """Stream ``answer()`` (text deltas) on the page: the whole text, or None with the error shown."""
    try:
        text = st.write_stream(answer())
    except (vlm.VLMError, compose.ComposeError) as e:
        ui.error(e)
        return None
    return text if isinstance(text, str) else "".join(text)


def streamed(prompt: str, pics: list | None = None) -> str | None:
    """The endpoint's answer to one prompt, streamed on the page; None (error shown) on failure."""
    return shown(lambda: compose.ask(ep, prompt, [compose.resolve(p, by=ui.user(), home=ui.home()) for p in pics or []], by=ui.user(),
                                       home=ui.home(), **sampling))


def composer() -> None:
    drafts = {d["id"]: d for d in compose.drafts(by=ui.user(), home=ui.home())}
    ids = ["", *drafts]
    current = st.query_params.get("draft", "")
    if current and current not in drafts:           # a link to a draft this user may not open: say why
        try:
            compose.draft(current, by=ui.user(), home=ui.home())
        except compose.ComposeError as e:
            ui.error(e)
        except KeyError:
            pass
    pick = st.selectbox(ui.t("xc.draft"), ids, index=ids.index(current) if current in ids else 0, key=f"xc_draft_{current}",
                        format_func=lambda i: drafts[i]["instruction"][:60] + f" ({i})" if i else ui.t("xc.draft.new"))
    if pick != current:
        st.query_params["draft"] = pick
        st.rerun()
    if ep is None:
        st.info(ui.t("xc.need_endpoint"))
    if not pick:
        instruction = st.text_area(ui.t("xc.instruction"), placeholder=ui.t("xc.instruction.placeholder"),
                                   key="xc_instruction")
        if st.button(ui.t("xc.write"), key="xc_write", disabled=ep is None or bad, type="primary"):
            try:
                draft = compose.new_draft(instruction, images, owner=ui.owner())
            except compose.ComposeError as e:
                ui.error(e)
                return
            with st.container(key="xc_article_stream"):
                text = streamed(compose.article_prompt(instruction), images)
            if text is not None:
                draft["paragraphs"] = compose.paragraphs(text)
                save(draft)
                st.query_params["draft"] = draft["id"]
                st.rerun()
        return
    draft = drafts[pick]
    st.markdown(f"**{draft['instruction']}**")
    cols = st.columns([1, 2, 2])
    n = cols[0].number_input(ui.t("xc.n_images"), 1, 8, min(2, max(1, len(draft["paragraphs"]))), key="xc_n_images")
    if cols[1].button(ui.t("xc.place"), key="xc_place", disabled=ep is None):
        with st.expander(ui.t("xc.model_answer"), expanded=True):
            answer = streamed(compose.slots_prompt(draft["paragraphs"], n))
        if answer is not None:
            draft["slots"] = compose.parse_slots(answer, draft["paragraphs"], n)
            save(draft)
            st.rerun()
    if cols[2].button(ui.t("xc.match"), key="xc_match", disabled=not draft["slots"]):
        if not compose.gallery(by=ui.user(), home=ui.home()):
            st.warning(ui.t("xc.no_gallery"))
        else:
            bar = st.progress(0.0)
            try:
                compose.caption_gallery(ep, on_caption=lambda d, t: bar.progress(
                    d / t, ui.t("xc.captioning", done=d, total=t)), by=ui.user(), home=ui.home())
                compose.rerank(draft, by=ui.user(), home=ui.home())
                save(draft)
                st.rerun()
            except (vlm.VLMError, compose.ComposeError) as e:
                ui.error(e)
    slots = {s["after"]: s for s in draft["slots"]}
    context = "\n\n".join(draft["paragraphs"])
    for i, para in enumerate(draft["paragraphs"]):
        with st.container(key=f"xc_para_{i}", border=True):
            box = st.empty()
            box.markdown(para)
            edit = [b for b, c in zip(compose.EDITS, st.columns(len(compose.EDITS) + 3))
                    if c.button(ui.t("xc.edit." + b), key=f"xc_edit_{b}_{i}", disabled=ep is None)]
            if edit:
                with box.container():
                    text = streamed(compose.edit_prompt(edit[0], para, context))
                if text and text.strip():
                    draft["paragraphs"][i] = text.strip()
                    save(draft)
                    st.rerun()
        if i in slots:
            slot_view(draft, slots[i], i)
    if draft["paragraphs"]:
        b = st.columns(2)
        b[0].download_button(ui.t("xc.export.md"), compose.export_markdown(draft, by=ui.user(), home=ui.home()), f"article-{draft['id']}.zip",
                             "application/zip", key="xc_export_md")
        b[1].download_button(ui.t("xc.export.html"), compose.export_html(draft, by=ui.user(), home=ui.home()), f"article-{draft['id']}.html",
                             "text/html", key="xc_export_html")


def save(draft: dict) -> None:
    """Keep a draft; a student changing an instructor's draft (read-only to them) is told so, and the
    page stops there."""
    try:
        compose.save(draft, by=ui.user(), home=ui.home())
    except compose.ComposeRefused as e:
        ui.error(e)
        st.stop()


def slot_view(draft: dict, slot: dict, i: int) -> None:
    with st.container(key=f"xc_slot_{i}", border=True):
        st.caption(ui.t("xc.slot", n=i + 1) + " · " + ui.t("xc.slot.by." + slot["by"]))
        cap = st.text_input(ui.t("xc.slot.caption"), slot["caption"], key=f"xc_cap_{i}")
        if cap != slot["caption"]:                    # a new caption re-ranks with the captions already known
            slot["caption"] = cap
            compose.rerank(draft, by=ui.user(), home=ui.home())
            save(draft)
        options = ["", *[p for p, _ in slot["ranked"]]]
        scores = dict(map(tuple, slot["ranked"]))
        chosen = st.selectbox(ui.t("xc.slot.pick"), options, index=options.index(slot["image"] or ""),
                              key=f"xc_pick_{i}_{slot['image']}",
                              format_func=lambda p: f"{p.rsplit('/', 1)[-1]} ({scores[p]:.2f})" if p else ui.t("xc.slot.none"))
        if chosen != (slot["image"] or ""):
            slot.update(image=chosen or None, chosen=True)
            save(draft)
            st.rerun()
        if slot["image"]:
            st.image(str(compose.resolve(slot["image"], by=ui.user(), home=ui.home())), caption=slot["caption"], width=320)


def compare() -> None:
    """The same images and question to two endpoints side by side (a base model and its fine-tune)."""
    others = [e for e in live if ep is not None and e["name"] != ep["name"]]
    with st.container(key="xc_compare"):
        if not others:
            st.info(ui.t("xc.compare.need_two"))
            return
        names = [e["name"] for e in others]
        other = others[names.index(st.selectbox(ui.t("xc.compare.with"), names, key="xc_compare_with"))]
        question = st.text_input(ui.t("xc.compare.question"), key="xc_compare_q")
        if st.button(ui.t("xc.compare.go"), key="xc_compare_go", disabled=bad or not question.strip()):
            ask = [{"role": "user", "content": question, "images": [compose.resolve(p, by=ui.user(), home=ui.home()) for p in images]}]
            for col, e, key in zip(st.columns(2), (ep, other), ("xc_compare_a", "xc_compare_b")):
                with col, st.container(key=key, border=True):
                    st.markdown(f"**{e['name']}**")
                    shown(lambda e=e: vlm.stream(e, ask, by=ui.user(), home=ui.home(), **sampling))


if mode == "chat":
    image_chat()
elif mode == "compare":
    compare()
else:
    composer()
