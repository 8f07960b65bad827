"""API keys: a person's keys for the OpenAI gateway on this port (/v1), and how to call it from code."""
import streamlit as st

from backend.access import apikeys
from backend.pipeline import chat
from pages import keys, ui

st.title(ui.t("nav.api"))
st.caption(ui.t("api.intro"))
me = ui.user()

with st.form("api_create", border=True):
    name = st.text_input(ui.t("api.key_name"), key="api_key_name", max_chars=40, placeholder="laptop")
    if st.form_submit_button(ui.t("api.create"), type="primary"):
        try:
            st.session_state[keys.API_NEW_KEY] = apikeys.create(name or "key", by=me, home=ui.home())
        except apikeys.Refused as e:
            ui.error(e)
if new := st.session_state.get(keys.API_NEW_KEY):
    with st.container(key="api_new", border=True):
        st.success(ui.t("api.shown_once"))
        st.code(new, language=None)

rows = apikeys.listed(by=me, home=ui.home())
if not rows:
    st.info(ui.t("api.none"))
for r in rows:
    with st.container(key=f"api_key_{r['id']}", border=True):
        left, right = st.columns([5, 1])
        state = ui.t("api.revoked") if r["revoked_at"] else ui.t("api.active")
        left.markdown(ui.t("api.row", name=r["name"], prefix=r["prefix"], owner=r["owner"], state=state,
                           requests=r["requests"], tokens=r["tokens"], used=ui.when(r["last_used_at"]) or "-"))
        if not r["revoked_at"] and right.button(ui.t("api.revoke"), key=f"api_revoke_{r['id']}"):
            apikeys.revoke(r["id"], by=me, home=ui.home())
            st.rerun()

st.subheader(ui.t("api.use_from_code"))
models = [e["name"] for e in chat.endpoints(by=me, home=ui.home())]
model = st.selectbox(ui.t("api.model"), models or ["<model>"], key="api_model")
base = ui.gateway_url()
st.caption(ui.t("api.tunnel", url=base))
tab_py, tab_curl, tab_li = st.tabs(["openai (Python)", "curl", "LlamaIndex / LangChain"])
key = new or "<your key>"
tab_py.code(f'''from openai import OpenAI

client = OpenAI(base_url="{base}", api_key="{key}")
for chunk in client.chat.completions.create(
        model="{model}", stream=True,
        messages=[{{"role": "user", "content": "Who are you?"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()''', language="python")
body = '{"model": "%s", "messages": [{"role": "user", "content": "Who are you?"}]}' % model
tab_curl.code(f"curl {base}/chat/completions -H 'Authorization: Bearer {key}' \\\n"
              f"  -H 'Content-Type: application/json' -d '{body}'", language="bash")
tab_li.code(f'''# pip install llama-index-llms-openai-like langchain-openai
from llama_index.llms.openai_like import OpenAILike
llm = OpenAILike(api_base="{base}", api_key="{key}", model="{model}", is_chat_model=True)
print(llm.complete("Who are you?"))

from langchain_openai import ChatOpenAI
print(ChatOpenAI(base_url="{base}", api_key="{key}", model="{model}").invoke("Who are you?").content)''',
            language="python")
