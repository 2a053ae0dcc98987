import pytest

from tests.e2e.micro_run import MicroRun, micro_run


def pytest_collection_modifyitems(items):
    # Everything under tests/e2e starts Ray or runs the CLI pipeline: `pytest -m "not slow"` skips it.
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def micro(tmp_path_factory) -> MicroRun:
    """The one shared micro pipeline run of the session (tests/e2e/micro_run.py)."""
    return micro_run(tmp_path_factory)
