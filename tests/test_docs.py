"""Docs can't drift: every job kind and every setting is documented in the README."""
import re
from pathlib import Path

from backend import defaults, kinds

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_job_kind_is_documented():
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", README, re.M))
    assert set(kinds.KINDS) <= documented, f"undocumented kinds: {set(kinds.KINDS) - documented}"


def test_every_setting_is_documented():
    missing = [s for s in defaults.SETTINGS if f"`WORKBENCH_{s}`" not in README]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_gives_the_two_commands():
    assert "./workbench up" in README and "./workbench test" in README
    assert "ssh -CNg -L 6006:127.0.0.1:6006" in README
