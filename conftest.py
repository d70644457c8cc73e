"""Test-wide settings, applied before any test or notebook kernel starts.

- ``COURSE_DATA_DIR`` defaults to the offline copies in ``../shared/data`` when that exists.
- ``COURSE_FAST=1``: notebooks run in fast mode under pytest unless told otherwise.
- matplotlib draws off screen.
"""

import os
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"

if not os.environ.get("COURSE_DATA_DIR") and SHARED_DATA.is_dir():
    os.environ["COURSE_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("COURSE_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
