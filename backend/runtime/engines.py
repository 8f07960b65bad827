"""Engine environments: one virtual environment per engine, because engines pin conflicting versions.

``core`` is the environment the workbench itself runs in. The others are created on demand by an
``engine_install`` job under ``<WORKBENCH_HOME>/envs/<engine>``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from backend.core import defaults

# pip requirement lines for each engine. Every engine needs pydantic (jobs/common.py).
ENGINES: dict[str, dict] = {
    "opencompass": {
        # Full dependencies (wheels only, ~3 min, ~2.1 GB): opencompass.datasets imports most of them at
        # load time, so a --no-deps list would save little (cv2, seaborn) and break on the next release.
        "requirements": ["torch==2.13.0", "opencompass==0.5.4", "transformers>=4.45,<5", "numpy<2",
                         "pyarrow<21", "datasets<4", "peft>=0.13", "pydantic>=2"],
        "doc": "OpenCompass evaluation (transformers 4.x, numpy<2, datasets<4)",
    },
    "openxlab": {
        "requirements": ["oss2~=2.17.0", "requests", "tqdm", "rich", "filelock", "pytz", "pyyaml", "packaging",
                         "pydantic>=2"],     # openxlab's imports, without its old pins
        "no_deps": ["openxlab"],
        "doc": "OpenXLab downloads (old pins: installed with --no-deps)",
    },
    "lmdeploy": {
        "requirements": ["lmdeploy", "pydantic>=2"],
        "gpu_only": True,
        "doc": "LMDeploy TurboMind serving (CUDA only; pins torch<=2.12.1)",
    },
    "lagent": {
        # lagent 0.2.4 pins old packages (griffe<1, duckduckgo-search 5.3.1b1) and pulls jupyter, streamlit,
        # vllm-era extras it does not import for a ReAct agent over an OpenAI API: --no-deps, with what it
        # imports; numpy, pandas and matplotlib are for the model's code in the interpreter.
        "requirements": ["requests", "json5", "jsonschema", "func-timeout", "griffe<1.0", "phx-class-registry==4.1.0",
                         "termcolor", "tiktoken", "timeout-decorator", "distro", "filelock", "typing-extensions",
                         "beautifulsoup4", "cachetools", "duckduckgo-search==5.3.1b1", "numpy", "pandas",
                         "matplotlib", "pydantic>=2"],
        "no_deps": ["lagent==0.2.4"],
        "doc": "Lagent agents (old pins: installed with --no-deps) over the OpenAI API",
    },
    "xcomposer": {
        "requirements": ["torch==2.13.0", "transformers==4.40.2", "accelerate", "einops", "pillow",
                         "sentencepiece", "pydantic>=2"],
        "doc": "InternLM-XComposer remote code (old transformers)",
    },
}


def env_dir(engine: str, home: Path) -> Path:
    """``<WORKBENCH_HOME>/envs/<engine>``, or ``$WORKBENCH_ENGINES_DIR/<engine>`` when that is set
    (CI and tests share engines installed once, for example in ``.cache/envs``)."""
    shared = defaults.setting("ENGINES_DIR")
    return (Path(shared).resolve() if shared else home / "envs") / engine


def python(engine: str, home: Path) -> Path:
    """The interpreter that runs jobs of ``engine``."""
    if engine == "core":
        return Path(os.environ.get("WORKBENCH_CORE_PYTHON", sys.executable))
    return env_dir(engine, home) / "bin" / "python"


def requirements(engine: str) -> list[str]:
    info = ENGINES[engine]
    return info["requirements"] + info.get("no_deps", [])


def lock_file(env: str) -> Path:
    """``constraints/<env>.txt``: the versions an environment ("core" or an engine) installs, written by
    ``python -m backend.runtime.provision lock``."""
    return defaults.ROOT / "constraints" / f"{env}.txt"


def lock(engine: str) -> list[str]:
    """pip arguments that hold an engine to the versions the suite passed with: a package released since does not
    change a fresh install."""
    path = lock_file(engine)
    return ["-c", str(path)] if path.is_file() else []


def installed(engine: str, home: Path) -> bool:
    """True when the engine's venv was completed for its current requirement list."""
    if engine == "core":
        return True
    try:
        done = (env_dir(engine, home) / ".installed").read_text().split("\n")
    except FileNotFoundError:
        return False
    return set(requirements(engine)) <= set(done)


def dequantize_command(gguf: Path, out: Path, home: Path) -> list[str]:
    """A GGUF export back into a transformers folder (backend/workspace/models.py ``convert_gguf``), run in the core
    environment (transformers + gguf) for a job of any engine's."""
    return [str(python("core", home)), "-m", "backend.workspace.models", "dequantize", str(gguf), str(out)]
