"""The version locks (constraints/<env>.txt, backend/runtime/provision.py `lock`): a fresh install takes the tested
versions. A requirement added without re-locking, or a lock that no longer satisfies a requirement, fails here,
before a fresh machine resolves it to whatever was released that morning."""
from __future__ import annotations

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backend.core import defaults
from backend.runtime import engines, provision


def pins(env: str) -> dict[str, str]:
    lines = engines.lock_file(env).read_text().splitlines()
    return {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines if ln and not ln.startswith("#"))}


def requirement_lines(path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            out += requirement_lines(path.parent / line[2:].strip())
        elif line and not line.startswith("-"):
            out.append(line)
    return out


def unmet(requirements: list[str], env: str) -> list[str]:
    held = pins(env)
    bad = []
    for line in requirements:
        req = Requirement(line)
        version = held.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            bad.append(f"{line} (locked: {version})")
    return bad


def test_the_core_lock_pins_every_requirement_within_its_range():
    assert "-c constraints/core.txt" in (defaults.ROOT / "requirements.txt").read_text()
    assert unmet(requirement_lines(defaults.ROOT / "requirements-dev.txt"), "core") == []
    assert pins("core")["sentencepiece"] == "0.2.1"      # 0.2.3 needs protobuf 7: the CI failure this lock prevents


@pytest.mark.parametrize("engine", provision.TEST_ENGINES)
def test_each_test_engine_is_installed_from_its_lock(engine):
    assert unmet(engines.requirements(engine), engine) == []
    assert engines.lock(engine) == ["-c", str(engines.lock_file(engine))]


def test_a_requirement_outside_the_lock_is_named():
    assert unmet(["sentencepiece>=0.2.3"], "core") == ["sentencepiece>=0.2.3 (locked: 0.2.1)"]
    assert unmet(["not-a-locked-package"], "core") == ["not-a-locked-package (locked: None)"]
