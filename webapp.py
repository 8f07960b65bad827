"""The app as one ASGI application on one port (``python -m pages`` runs it with ``streamlit run``):
Streamlit's pages (app.py), the login routes (backend/access/webauth.py) and the OpenAI gateway for the class's
model servers (backend/pipeline/gateway.py, ``/v1``), all under the same base URL path and SSH tunnel."""
import streamlit as st
from starlette.middleware import Middleware
from streamlit import config

from backend.access import webauth
from backend.pipeline import gateway

BASE = config.get_option("server.baseUrlPath") or ""

app = st.App("app.py", routes=[*webauth.routes(BASE), *gateway.routes(BASE)],
             middleware=[Middleware(webauth.LoginRedirect, base=BASE)])
