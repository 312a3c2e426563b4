"""Packaging: pyproject.toml declares ranges, constraints.txt pins one tested set inside them, and
the built wheel works with the lowest declared versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def requirements() -> list[Requirement]:
    """The dependencies and every extra's, as declared."""
    meta = project()
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def pins() -> dict[str, Version]:
    """``name==version`` lines of constraints.txt, by canonical name."""
    out = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # one specifier per line
        assert spec.operator == "==", f"constraints.txt: {raw!r} is not an exact pin"
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def test_dependencies_are_ranges_with_a_lower_bound():
    for req in requirements():
        ops = {s.operator for s in req.specifier}
        assert not ops & {"==", "==="}, f"{req} is an exact pin; pins belong in constraints.txt"
        assert ">=" in ops, f"{req} has no lower bound (>=)"


def test_every_dependency_is_pinned_inside_its_range():
    pinned = pins()
    for req in requirements():
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(version, prereleases=True), (
            f"constraints.txt pins {req.name}=={version}, outside pyproject's {req}"
        )


def test_ci_installs_with_the_constraints():
    assert "pip install -q -c constraints.txt -e" in (ROOT / ".ci" / "run").read_text()


def lows() -> dict[str, str]:
    """Each dependency at the lowest version its range allows (its ``>=`` bound)."""
    out = {}
    for r in project()["dependencies"]:
        req = Requirement(r)
        (low,) = [s.version for s in req.specifier if s.operator == ">="]
        out[req.name] = low
    return out


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stderr[-3000:]}"


GENERATE = """
import importlib.metadata as md, json, sys
import textdiff
from textdiff import TextDiffusionPipeline
pipe = TextDiffusionPipeline.from_pretrained(sys.argv[1])
texts = pipe.generate(2, num_steps=10, seed=0)
versions = {n: md.version(n) for n in json.loads(sys.argv[2])}
print(json.dumps({"file": textdiff.__file__, "texts": texts, "versions": versions}))
"""


@pytest.mark.slow
def test_wheel_works_with_the_lowest_declared_versions(tmp_path):
    """Build the wheel, install it in a fresh venv with every dependency at its declared lower
    bound (torch at its constraints.txt pin: the lowest torch has no CPU build on this machine's
    disk, and elsewhere pip would fetch it), load a saved model folder and generate.

    Needs the package index (or a pip cache) for the low versions; several minutes."""
    # build from a copy, so the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "textdiff", src / "textdiff", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("textdiff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "textdiff/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()

    low = lows()
    low["torch"] = str(pins()["torch"])
    constraints = tmp_path / "lows.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in low.items()))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    run(
        [str(python), "-m", "pip", "install", "-q", "--only-binary", ":all:"]
        + ["-c", str(constraints), f"torch=={low['torch']}", str(wheel)]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [
            str(python),
            "-c",
            GENERATE,
            str(ROOT / "tests" / "legacy" / "gaussian"),
            json.dumps([*low]),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: textdiff must come from the installed wheel
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(venv.resolve())
    for name, version in low.items():  # numpy and transformers among them
        installed = Version(Version(out["versions"][name]).public)  # 2.13.0+cpu -> 2.13.0
        assert installed == Version(version), out["versions"]
    assert len(out["texts"]) == 2 and all(isinstance(t, str) for t in out["texts"])
