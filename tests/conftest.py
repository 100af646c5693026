"""Shared fixtures: an isolated Prefect home and one real Prefect engine for the session."""

import os
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported: its settings are read once. Result records and the database live
# in a throwaway home so tests never see a developer's own Prefect state.
_HOME = Path(tempfile.mkdtemp(prefix="trainflow-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_HOME / "storage")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="session")
def prefect_engine():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


def small_overrides(tmp_path: Path) -> list[str]:
    """Shrink a shipped pipeline to CI size and keep its outputs under tmp_path."""
    return [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}"]
