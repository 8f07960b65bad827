"""Every session-state key the pages share or keep, in one place: a page that hands something to
another (Chat with it, Fine-tune it) and the page that reads it use the same name from here.
Widget keys that only their own widget reads stay beside the widget."""

LANG, OWNER, OWNER_INPUT, OWNER_BAD = "lang", "owner", "owner_input", "owner_bad"
USER, TOKEN = "auth_user", "auth_token"     # class mode (pages/auth.py)

# Chat
CHAT_HISTORY, CHAT_PENDING, CHAT_EXTERNAL = "chat_history", "chat_pending", "chat_external"
CHAT_STARTING, CHAT_COMPARE, CHAT_ERROR, CHAT_CMP_ERRORS = "chat_starting", "chat_compare", "chat_error", "chat_cmp_errors"
CHAT_MODEL = "chat_model"                 # "Chat with it" on the Models page: the model to start
CHAT_PICK = "chat_pick"                   # the endpoint chosen in the Chat tab
CHAT_CMP_LEFT, CHAT_CMP_RIGHT = "chat_cmp_left", "chat_cmp_right"

# XComposer (the open draft is ?draft=<id>: it survives a reload)
XC_HISTORY, XC_STARTING = "xc_history", "xc_starting"

# Agent (the open run is ?run=<id>: it survives a reload)
AGENT_EXTERNAL = "agent_external"     # outside URLs added in this session: name -> {endpoint, key}

# Fine-tune, Evaluate, Models, Datasets
FT_JOB, FT_MODEL = "ft_job", "ft_model"
EVAL_RUN, EVAL_MODELS = "eval_run", "eval_models"
MODELS_JOB, MODELS_CONFIRM = "models_job", "models_confirm"
MODELS_EXPORT_JOB = "models_export_job"      # the export (GGUF) or push job this session follows
DS_STATE = "ds_state"                     # per-dataset results (validation, convert, split, stats job)
KB_JOB = "kb_job"                         # Knowledge bases: the index job just submitted
KB_EVAL_RUN = "kb_eval_run"               # Knowledge bases: the rag_eval job just submitted
LAB_NOTE = "lab_note"                     # Home: what the last "Start this step" did


def job_view(job_id: int) -> str:
    """A job's live view (a backend.runtime.live.Viewer) kept between reruns."""
    return f"jobview-{job_id}"


def list_every(name: str) -> str:
    """The refresh pace a list of jobs runs at (pages/ui.py list_fragment)."""
    return f"list_every_{name}"


def jobs_frame(name: str) -> str:
    """A list's table and the rows it shows (pages/ui.py jobs_frame_cached)."""
    return f"jobs_frame_{name}"


def ds_page(name: str) -> str:
    return f"ds_page_{name}"
API_NEW_KEY = "api_new_key"              # the key just made: shown once, in this browser session only
