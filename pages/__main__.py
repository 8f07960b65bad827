"""Start the Streamlit app: ``python -m pages [streamlit options]``.

app.py registers every page with ``st.navigation``. Streamlit would otherwise treat the ``pages/``
folder beside app.py as an old-style multipage app until the first run of app.py, so a first
visit straight to ``/jobs?job=3`` would run that page without app.py. Declaring up front that this
app does not use the pages folder keeps every URL on app.py's registry.
"""
import os
import sys
from pathlib import Path

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli

from backend import defaults, paths, queue

PagesManager.uses_pages_directory = False

if __name__ == "__main__":
    os.umask(paths.PRIVATE_UMASK)            # the app's files (uploads, converted datasets) are its user's only
    if problem := queue.workspace_problem():
        sys.exit(f"error: {problem}")
    app = str(Path(__file__).resolve().parent.parent / "app.py")
    # the server refuses a bigger upload before holding it (the widgets' own limit is the same setting)
    upload = [] if any(a.startswith("--server.maxUploadSize") for a in sys.argv) else [
        "--server.maxUploadSize", str(defaults.setting("UPLOAD_MAX_MB"))]
    sys.argv = ["streamlit", "run", app, *upload, *sys.argv[1:]]
    sys.exit(cli.main())
