"""Fixtures shared by the unit tests (environment defaults live in the root conftest.py)."""

import pytest
import torch


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    from course_utils.corpora import load_text

    return load_text("tinyshakespeare")


@pytest.fixture
def threads():
    """Set torch's thread count for one test and put it back afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def split_calls(monkeypatch):
    """The chunk counts of the split_linear calls that ParallelLinear makes."""
    import course_utils.linear as linear_mod

    calls = []
    split = linear_mod.split_linear

    def counting(*args, **kwargs):
        calls.append(args[-1])
        return split(*args, **kwargs)

    monkeypatch.setattr(linear_mod, "split_linear", counting)
    return calls
