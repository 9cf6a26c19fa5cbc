"""requirements/lock.txt pins, for this Python and platform, every dependency pyproject.toml names."""

from __future__ import annotations

import sys

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

LOCK = REPO_ROOT / "requirements" / "lock.txt"
LOCKED_EXTRAS = ("dev", "tracking", "train", "serve")


def locked_pins() -> dict[str, str]:
    """name -> version of the lock's lines whose markers fit this environment."""
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), start=1):
        if not line[:1].isalnum():
            continue
        pin = Requirement(line)
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        versions = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert len(versions) == 1, f"{LOCK.name}:{number}: {line!r} is not an exact pin"
        name = pin.name.lower().replace("_", "-")
        assert name not in pins, f"{LOCK.name}:{number}: {name} is pinned twice for this environment"
        pins[name] = versions[0]
    return pins


def test_lock_pins_every_dependency_within_its_range():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        declared += project["optional-dependencies"][extra]
    pins = locked_pins()
    stale = []
    for text in declared:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        if name not in pins:
            stale.append(f"{name} is not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            stale.append(f"{name}=={pins[name]} is outside pyproject.toml's {requirement.specifier}")
    assert not stale, f"requirements/lock.txt is stale ({'; '.join(stale)}): run `make lock`"


def test_lock_pins_the_torch_of_requirements_torch_txt():
    """One torch version for CPU and CUDA machines, without a local build label such as +cpu."""
    lines = (REPO_ROOT / "requirements" / "torch.txt").read_text().splitlines()
    torch_txt = [line for line in lines if line.startswith("torch==")]
    assert len(torch_txt) == 1
    pinned = torch_txt[0].removeprefix("torch==")
    assert "+" not in pinned
    assert locked_pins()["torch"] == pinned
