"""Fixtures shared by the unit tests (environment defaults live in the root conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    from course_utils.data import load_text

    return load_text("tinyshakespeare")
