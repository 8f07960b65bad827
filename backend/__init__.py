"""Lab Workbench backend: a plain library (never imports streamlit) that pages and the CLI call."""
