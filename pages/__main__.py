"""Start the app: ``python -m pages [streamlit options]``. Streamlit runs webapp.py, the ASGI application
(app.py's pages plus the login and /v1 routes on the same port), under uvicorn.

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

from backend.access import users
from backend.core import defaults, paths
from backend.runtime import queue

PagesManager.uses_pages_directory = False


def option(name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` on this command line."""
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    os.umask(paths.PRIVATE_UMASK)            # the app's files (uploads, converted datasets) are its user's only
    address = option("server.address")
    address = defaults.setting("ADDRESS") if address is None else address
    if problem := queue.workspace_problem(home=defaults.home()) or users.serve_problem(address):
        sys.exit(f"error: {problem}")
    app = str(Path(__file__).resolve().parent.parent / "webapp.py")
    # the server refuses a bigger upload before holding it (the widgets' own limit is the same setting)
    upload = [] if option("server.maxUploadSize") else ["--server.maxUploadSize", str(defaults.setting("UPLOAD_MAX_MB"))]
    # only these Host names reach the app's WebSocket (a page elsewhere cannot drive it by DNS rebinding)
    hosts = ["localhost", "127.0.0.1", "::1", *filter(None, map(str.strip, defaults.setting("ALLOWED_HOSTS").split(",")))]
    os.environ["FORWARDED_ALLOW_IPS"] = ""   # uvicorn: never take the client's address from X-Forwarded-For
    sys.argv = ["streamlit", "run", app, *upload, "--server.address", address,
                *[a for h in hosts for a in ("--server.allowedHosts", h)], *sys.argv[1:]]
    sys.exit(cli.main())
