"""XComposer: image chat with an image-text endpoint (a `vlm` job), streaming answers.

The page never loads a model: the `vlm` job does (backend/vlm.py talks to it). Uploads are checked
here (not an image, corrupt, too large, too many) before anything is sent. Compose mode comes later.
"""
import streamlit as st

from backend import models, queue, vlm
from pages import ui

S_HISTORY, S_STARTING = "xc_history", "xc_starting"

st.title(ui.t("nav.xcomposer"))
st.session_state.setdefault(S_HISTORY, [])


@st.fragment(run_every=1.0)
def starting(job_id: int) -> None:
    """A vlm job coming up: its state until its endpoint is live."""
    job = queue.get(job_id)
    if any(e["job_id"] == job_id for e in vlm.endpoints()):
        st.session_state.pop(S_STARTING, None)
        st.rerun(scope="app")
    with st.container(key="xc_starting", border=True):
        st.markdown(ui.t("xc.starting", id=job_id, state=ui.state_label(job["state"])))
        if job["state"] in ("failed", "lost", "cancelled"):
            st.error(ui.t("job.error", cls=job["error_class"] or "crash", message=job["error_message"] or ""))
            if st.button(ui.t("xc.dismiss"), key="xc_dismiss"):
                st.session_state.pop(S_STARTING, None)
                st.rerun(scope="app")


live = vlm.endpoints()
with st.container(key="xc_endpoint", border=True):
    if live:
        names = [e["name"] for e in live]
        pick = st.selectbox(ui.t("xc.endpoint"), names, key="xc_pick")
        ep = live[names.index(pick)]
        st.caption(ui.t("xc.endpoint.info", model=ep["model"], device=ep["device"], images=ep["max_images"]))
    else:
        ep = None
        st.info(ui.t("xc.none"))
    registered = sorted(m["name"] for m in models.list_models())
    cols = st.columns([3, 1])
    model = cols[0].selectbox(ui.t("xc.model"), registered, key="xc_model")
    if cols[1].button(ui.t("xc.start"), key="xc_start", disabled=not model):
        job_id = ui.submit("vlm", {"model": model})      # refusals (no GPU, not image-text...) show here
        if job_id:
            st.session_state[S_STARTING] = job_id
if st.session_state.get(S_STARTING):
    starting(st.session_state[S_STARTING])

with st.sidebar:
    max_new = st.slider(ui.t("xc.max_new"), 8, 1024, 128, key="xc_max_new")
    temperature = st.slider(ui.t("xc.temperature"), 0.0, 1.5, 0.0, 0.05, key="xc_temperature")
    if st.button(ui.t("xc.clear"), key="xc_clear"):
        st.session_state[S_HISTORY] = []

uploads = st.file_uploader(ui.t("xc.upload"), accept_multiple_files=True, key="xc_upload")
images, bad = [], False
for f in uploads or []:
    try:
        vlm.check_image(f.getvalue(), f.name)
        images.append(f.getvalue())
    except vlm.VLMError as e:
        st.error(ui.t("xc.bad_image", message=str(e)))
        bad = True
if images:
    st.image(images, width=160)

with st.container(key="xc_chat"):
    for m in st.session_state[S_HISTORY]:
        with st.chat_message(m["role"]):
            if m.get("images"):
                st.image(m["images"], width=120)
            st.markdown(m["content"])

prompt = st.chat_input(ui.t("xc.ask"), key="xc_input", disabled=ep is None or bad)
if prompt and ep is not None:
    history = st.session_state[S_HISTORY]
    user = {"role": "user", "content": prompt, "images": images}
    with st.chat_message("user"):
        if images:
            st.image(images, width=120)
        st.markdown(prompt)
    with st.chat_message("assistant"), st.container(key="xc_answer"):
        try:
            text = st.write_stream(vlm.stream(ep, history + [user], max_new_tokens=max_new, temperature=temperature))
            history += [user, {"role": "assistant", "content": text if isinstance(text, str) else "".join(text)}]
        except vlm.VLMError as e:
            st.error(str(e))
