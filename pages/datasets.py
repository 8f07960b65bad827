"""datasets page (placeholder until its issue lands)."""
import streamlit as st

from pages import ui

st.title(ui.t("nav.datasets"))
st.info("Coming soon.")
