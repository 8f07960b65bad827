"""Docs can't drift: every job kind and every setting is documented in the README."""
import re
from pathlib import Path

from backend.core import defaults
from backend.kinds import catalog as kinds

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_job_kind_is_documented():
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", README, re.M))
    assert set(kinds.KINDS) <= documented, f"undocumented kinds: {set(kinds.KINDS) - documented}"


def test_the_readme_table_is_the_settings_list():
    """Each setting in defaults.SETTINGS has its README row with its default, and the README documents no
    setting the code does not have."""
    rows = dict(re.findall(r"^\| `WORKBENCH_([A-Z0-9_]+)` \| ([^|]*) \|", README, re.M))
    assert set(rows) == set(defaults.SETTINGS), f"README vs code: {set(rows) ^ set(defaults.SETTINGS)}"
    for name, s in defaults.SETTINGS.items():
        shown = rows[name].strip().strip("`")
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool):
            assert float(shown) == s.default, f"WORKBENCH_{name}: README says {shown}, code {s.default}"


def test_every_variable_the_code_reads_is_a_setting():
    """An undocumented setting can't land: every WORKBENCH_* name in the code is in the settings list
    (or is one the workbench sets for itself)."""
    names = set()
    for path in [*ROOT.glob("backend/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("pages/*.py"),
                 ROOT / "app.py", ROOT / "workbench"]:
        names |= set(re.findall(r"WORKBENCH_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    unknown = names - {f"WORKBENCH_{n}" for n in defaults.SETTINGS} - defaults.INTERNAL
    assert not unknown, f"read by the code but not in defaults.SETTINGS: {sorted(unknown)}"


def test_readme_gives_the_two_commands():
    assert "./workbench up" in README and "./workbench test" in README
    assert "ssh -CNg -L 6006:127.0.0.1:6006" in README
