"""Cache keys: content-derived, stable across runs, sensitive to config, inputs and code."""

import pytest

from trainflow.artifacts import ArtifactRef
from trainflow.caching import canonical, code_fingerprint, library_versions
from trainflow.registry import TASKS
from trainflow.sourcegraph import code_scope
from trainflow.tasks.clean import CleanParams


def ref(fingerprint: str) -> ArtifactRef:
    return ArtifactRef(uri=f"/store/table/{fingerprint}", fingerprint=fingerprint, kind="table")


def test_refs_enter_keys_by_fingerprint_only():
    a = canonical({"data": ref("f1")})
    moved = canonical({"data": ArtifactRef(uri="/elsewhere", fingerprint="f1", kind="table")})
    assert a == moved
    assert a != canonical({"data": ref("f2")})


def test_config_is_canonical_and_sensitive():
    one = canonical({"params": CleanParams(type="clean", missing="mean")})
    same = canonical({"params": CleanParams(type="clean", missing="mean", drop_duplicates=True)})
    other = canonical({"params": CleanParams(type="clean", missing="median")})
    assert one == same and one != other


def test_code_fingerprint_covers_imported_trainflow_modules():
    import trainflow.tasks.clean  # noqa: F401  (loaded so its imports can be walked)
    import trainflow.tasks.split  # noqa: F401

    clean, split = (
        code_fingerprint("trainflow.tasks.clean"),
        code_fingerprint("trainflow.tasks.split"),
    )
    assert len(clean) == 64 and clean != split
    assert code_fingerprint("trainflow.tasks.clean") == clean  # stable


def test_library_versions_name_the_numeric_stack():
    versions = library_versions()
    assert versions["torch"].startswith("2.") and versions["polars"] != "absent"
    # a study's draws and an explanation depend on these too (captum may be "absent")
    assert versions["optuna"] != "absent" and {"scipy", "captum"} <= set(versions)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_code_fingerprint_of_its_own_code(name):
    """Each task's cache key can be computed (a task whose key raises is never cached), and
    reading the task table for its options does not pull every other task into its key."""
    module = TASKS[name].module
    scope = code_scope(module)
    assert module in scope
    others = {task.module for task in TASKS.values()} - {module}
    assert len(others & set(scope)) < len(others) / 2, sorted(others & set(scope))
    assert len(code_fingerprint(module)) == 64
