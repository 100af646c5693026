"""Shared fixtures: an isolated Prefect home and one real Prefect engine for the session."""

import json
import os
import shutil
import subprocess
import sys
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
# Each `trainflow run` of a test gets a server of its own that ends with it, not a warm server
# left running for the next command (tests/faults/test_warm_server.py tests that one).
os.environ.setdefault("TRAINFLOW_SERVER_IDLE_S", "0")
# Nor a warm worker (trainflow.warmworker), even where a test turns the warm server on: only
# tests/faults/test_warm_worker.py starts one, and stops it.
os.environ.setdefault("TRAINFLOW_WORKER_IDLE_S", "0")

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


# A test that needs one of these runs whole flows (the in-process engine, a real server, a
# serving worker), and so does every test under tests/flows/ and tests/e2e/ (some start the
# engine in a subprocess): slow by definition; leaving them out spares the fast run the
# engine's start-up too.
_ENGINES = {"prefect_engine", "prefect_server", "served", "package_run"}
_FLOW_FOLDERS = ("tests/flows/", "tests/e2e/")


# Under pytest-xdist (`-n auto --dist loadgroup`, as .ci/run runs), a file's tests run on one
# worker, so its module fixtures are built once; and the tests that share one of these costly
# session fixtures run on one worker, so it starts once: the e2e server, the package runs.
_GROUPS = {"prefect_server": "server", "served": "server", "package_run": "package_run"}


# The order xdist hands groups out in: by default, the groups with the most tests first, which
# left the slowest one-test files (minutes each) for the end, on one worker while the other sat
# idle. These files go first, the slowest first (durations from CI logs); the rest follow in
# collection order (e2e, faults, flows, tasks, then the many short unit tests that fill gaps).
_FIRST = (
    "tests/faults/test_kill_rerun.py",
    "tests/flows/test_fingerprint_scope.py",
    "tests/flows/test_search_resume.py",
    "tests/flows/test_ray_runner.py",
    "tests/faults/test_warm_worker.py",
    "tests/flows/test_search_nested.py",
    "tests/tasks/test_fit_on.py",
    "tests/tasks/test_ddp.py",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects and xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that runs flows (`pytest -m "not slow"` is the fast run); the
    other slow ones (CLI subprocesses, long training) carry `@pytest.mark.slow` themselves."""
    groups = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _ENGINES & fixtures or item.nodeid.startswith(_FLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
        shared = sorted(_GROUPS[name] for name in fixtures & _GROUPS.keys())
        group = shared[0] if shared else item.nodeid.split("::")[0]  # else the test's file
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item.nodeid] = group
    first = {name: rank for rank, name in enumerate(_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))  # stable
    folder = os.environ.get(_GROUPS_DIR)
    if hasattr(config, "workerinput") and folder:  # an xdist worker: tell the controller
        mine = Path(folder) / f"{config.workerinput['workerid']}.json"
        mine.with_suffix(".part").write_text(json.dumps(groups))
        mine.with_suffix(".part").replace(mine)  # whole or absent when the controller reads


# pytest-xdist 3.8 puts a test in its xdist_group by renaming the item (`item._nodeid`), which
# pytest 9.2 no longer reads (the id lives elsewhere): every test was then a group of its own,
# and a file's module fixtures and the session fixtures above were built on both workers. So
# the workers write each test's group into this folder, and the controller schedules by it.
_GROUPS_DIR = "TRAINFLOW_TEST_GROUPS"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        os.environ[_GROUPS_DIR] = tempfile.mkdtemp(prefix="trainflow-test-groups-")


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(_GROUPS_DIR, ""), ignore_errors=True)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    config.option.loadscopereorder = False  # hand groups out in collection order (_FIRST)
    from xdist.scheduler import LoadGroupScheduling

    class ByGroup(LoadGroupScheduling):
        """--dist loadgroup with the groups the workers wrote (all collected alike)."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first called once every worker has collected
                self.groups = {}
                for file in Path(os.environ[_GROUPS_DIR]).glob("*.json"):
                    self.groups.update(json.loads(file.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return ByGroup(config, log)


@pytest.fixture(scope="session")
def prefect_engine():
    import prefect.main  # noqa: F401  Prefect's SDK entry point configures logging (replacing

    # the root logger's handlers): here once, as a CLI process does before any run, and not
    # inside a test, where it would drop pytest's log capture
    from prefect.testing.utilities import prefect_test_harness

    # generous: on a loaded machine (two xdist workers, or a shared dev box) start-up is slow
    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture(scope="session")
def package_run(prefect_engine, tmp_path_factory):
    """`package_run(name)`: the CI-sized run of a shipped pipeline (tests/flows/helpers.py,
    PACKAGE_RUNS) whose package the parity and export tests read, run once per session.

    Those tests only read the run (they score and export into their own tmp_path), so one
    run serves both instead of one each.
    """
    from tests.flows.helpers import PACKAGE_RUNS, run

    runs: dict[str, tuple[dict, dict[str, list[str]]]] = {}

    def get(name: str) -> tuple[dict, dict[str, list[str]]]:
        if name not in runs:
            runs[name] = run(name, tmp_path_factory.mktemp(name), *PACKAGE_RUNS[name])
        return runs[name]

    return get


# The database migrations a Prefect home's first server start runs, as a child process would
# (its own PREFECT_HOME): tens of seconds on a small machine, once per fresh home.
_MIGRATE = """
import asyncio
from prefect.server.database import provide_database_interface
asyncio.run(provide_database_interface().create_db())
"""


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory):
    """`prefect_home(path)`: make `path` a Prefect home whose database is migrated already,
    and return it (the child's PREFECT_HOME).

    A fresh home's first server start migrates its empty database, and that is most of its
    start-up; tests about what a run does then each paid it. They get a copy of one empty
    database migrated once per session (under pytest-xdist, once for all workers): the same
    empty database a fresh home's first start makes. Tests of two first starts at once in one
    fresh home do not use this.
    """
    import filelock

    # under xdist the workers' base temps share a parent: one template for them all
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    template = shared / "prefect-home-template"
    with filelock.FileLock(str(shared / "prefect-home-template.lock")):
        if not (template / "prefect.db").exists():
            building = shared / "prefect-home-template.building"
            shutil.rmtree(building, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(building), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            subprocess.run(
                [sys.executable, "-c", _MIGRATE], env=env, check=True, capture_output=True
            )
            building.rename(template)

    def make(home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(template / "prefect.db", home / "prefect.db")
        return home

    return make
