"""GGUF export (the export job, jobs/export.py) with llama.cpp's own converter: ``convert_hf_to_gguf.py``,
its ``conversion/`` package and the ``gguf-py`` it ships with (the script puts that one first on its path,
so the converter and its gguf writer are always the same commit). They come from PyPI inside the
llama-cpp-python sdist, which vendors llama.cpp (MIT, LICENSE copied beside them): ``pip download`` it
once (76 MB) and only those files (~2.5 MB) are kept; nothing is compiled.

Output types are the ones the script writes itself (f16, bf16, q8_0, f32); llama.cpp's k-quants
(Q4_K_M ...) need its compiled ``llama-quantize``, which no Python package ships.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from backend.core import defaults
from backend.workspace import models

LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"     # its sdist vendors llama.cpp (convert script, gguf-py)
SCRIPT = "convert_hf_to_gguf.py"
MEMBERS = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")   # what is kept of vendor/llama.cpp/
OUTTYPES = ("f16", "q8_0", "bf16", "f32")


def converter_dir(home: Path) -> Path:
    given = defaults.setting("LLAMA_CPP_DIR")
    return Path(given).expanduser() if given else models.cache_dir(home) / f"llama.cpp-{LLAMA_CPP_REQUIREMENT.split('==')[1]}"


def converter(home: Path, log=print) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, fetched and unpacked on first use (one at a time)."""
    dest = converter_dir(home)
    with models.fetch_lock("llama.cpp", home):
        if (dest / SCRIPT).is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "--progress-bar", "off", LLAMA_CPP_REQUIREMENT, "-d", tmp]
            log("$ " + " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            sdist = next(Path(tmp).glob("*.tar.gz"), None)
            if proc.returncode != 0 or sdist is None:
                raise models.ModelError("err.model.pip_failed", req=LLAMA_CPP_REQUIREMENT,
                                        error=proc.stderr.strip()[-500:])
            unpacked = Path(tmp) / "llama.cpp"
            with tarfile.open(sdist) as t:
                for m in t.getmembers():
                    rel = m.name.partition("/vendor/llama.cpp/")[2]
                    if (m.isfile() or m.isdir()) and rel and any(rel == k or rel.startswith(k) for k in MEMBERS):
                        m.name = rel
                        t.extract(m, unpacked, filter="data")
            shutil.rmtree(dest, ignore_errors=True)
            unpacked.rename(dest)
        log(f"llama.cpp's converter from {LLAMA_CPP_REQUIREMENT} unpacked into {dest}")
        return dest


def command(conv: Path, model: Path, outfile: Path, outtype: str) -> list[str]:
    """The conversion, as llama.cpp documents it (run by the job; bench/export.py runs it bare)."""
    return [sys.executable, str(conv / SCRIPT), str(model), "--outtype", outtype, "--outfile", str(outfile)]
