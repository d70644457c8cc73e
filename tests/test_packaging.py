"""pyproject.toml, environment.yml and noxfile.py must not drift apart."""

import ast
import os
import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (the dev extra installs it there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# PyPI name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch-cpu"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_python(env: dict) -> str:
    """The Python that environment.yml pins, as "3.11" (it must pin one minor version)."""
    pins = [d for d in env["dependencies"] if isinstance(d, str) and _name(d) == "python"]
    assert len(pins) == 1, f"environment.yml needs one python entry, has {pins}"
    match = re.fullmatch(r"python\s*=\s*(3\.\d+)(\.\*)?", pins[0].strip())
    assert match, f"environment.yml should pin one minor version, e.g. python=3.11, not {pins[0]}"
    return match.group(1)


def _classifier_pythons(project: dict) -> list[str]:
    """The "3.x" of each ``Programming Language :: Python :: 3.x`` classifier, oldest first."""
    found = [m.group(1) for c in project.get("classifiers", [])
             if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))]
    return sorted(found, key=lambda v: int(v.split(".")[1]))


def test_every_pyproject_dependency_is_in_environment_yml():
    project = _project()
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    env = _environment()
    assert env["channels"] == ["conda-forge"]
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert "python" in conda and "pip" in conda
    # a requirement for other Pythons only (tomli on 3.10) is not needed in the conda env
    python = {"python_version": _conda_python(env)}
    needed = [r for r in wanted
              if Requirement(r).marker is None or Requirement(r).marker.evaluate(python)]
    assert any(r not in needed for r in wanted if "tomli" in r), (
        "tomli is needed on Python 3.10 only: keep its marker python_version < '3.11'")
    missing = [r for r in needed if CONDA_NAMES.get(_name(r), _name(r)) not in conda]
    assert not missing, f"add these to environment.yml: {missing}"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("-e .") for p in pip)


def test_the_declared_pythons_agree():
    """requires-python, the classifiers (the Pythons nox tests), environment.yml, ruff, nox."""
    project = _project()
    declared = SpecifierSet(project["requires-python"])
    tested = _classifier_pythons(project)
    assert tested, "add Programming Language :: Python :: 3.x classifiers to pyproject.toml"
    minors = [int(v.split(".")[1]) for v in tested]
    assert minors == list(range(minors[0], minors[-1] + 1)), f"a Python is missing in {tested}"
    # every tested Python is allowed, and the oldest allowed one is tested
    outside = [v for v in tested if f"{v}.0" not in declared]
    assert not outside, f"requires-python {declared} excludes the classifiers' {outside}"
    older = f"3.{minors[0] - 1}.99"
    assert older not in declared, (
        f"requires-python {declared} allows Pythons older than {tested[0]}, which nothing tests")

    conda = _conda_python(_environment())
    assert conda in tested, f"environment.yml's python={conda} is not among {tested}"

    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == "py3" + str(minors[0]), (
        f"ruff's target-version should be the oldest Python, py3{minors[0]}")

    noxfile = ast.parse((ROOT / "noxfile.py").read_text())
    notebook_python = next(node.value.value for node in noxfile.body
                           if isinstance(node, ast.Assign)
                           and [t.id for t in node.targets] == ["NOTEBOOK_PYTHON"])
    assert notebook_python in tested, f"noxfile.py runs the notebooks on {notebook_python}"


def test_noxfile_finds_the_pythons_pyenv_installed_but_did_not_activate(tmp_path, monkeypatch):
    """The newest patch release of each missing version joins PYENV_VERSION, after the active."""
    pytest.importorskip("nox")  # the dev extra installs it
    for name in ["3.9.18", "3.10.2", "3.10.13", "3.11.7", "3.12.1", "3.13.0rc1", "pypy3.10"]:
        (tmp_path / "versions" / name / "bin").mkdir(parents=True)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PYENV_VERSION", "3.11.7")
    monkeypatch.setenv("PATH", "/usr/bin")
    find = runpy.run_path(str(ROOT / "noxfile.py"))["_find_pyenv_pythons"]
    monkeypatch.setenv("PYENV_VERSION", "3.11.7")  # loading the noxfile ran it once already
    monkeypatch.setenv("PATH", "/usr/bin")
    find(["3.10", "3.11", "3.12", "3.13"])
    # 3.10.13 is newer than 3.10.2 (not in string order); 3.13 has no final release here
    assert os.environ["PYENV_VERSION"] == "3.11.7:3.10.13:3.12.1"
    assert os.environ["PATH"] == "/usr/bin" + os.pathsep + str(tmp_path / "shims")
