"""Every mistake a user can make is one clear message, exit code 2, and no traceback; a fault
of trainflow is one `internal error` line, exit code 1, its traceback kept in a file."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainflow.cli import main
from trainflow.deploy import spec_file
from trainflow.errors import SpecError
from trainflow.spec.pipeline import load_spec

pytestmark = pytest.mark.faults

TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
DIGITS = str(ROOT / "pipelines" / "digits_cnn.yaml")
# The bad inputs that gave a traceback, each run through the real command: name -> (file
# content or None, arguments after the file, environment).
CASES = {
    "top_level_list": (b"- name: x\n- data: {}\n", [], {}),
    "top_level_string": (b"just some words\n", [], {}),
    "binary_file": (bytes(range(256)) * 4, [], {}),
    "duplicate_key": (b"name: a\nseed: 1\nname: b\n", [], {}),
    "transform_without_name": (None, ["--set", "train.augment.transforms.0={type: x}"], {}),
}


def trainflow(args, env=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [TRAINFLOW, *args], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case's run, started at once (each pays the command's start-up)."""
    folder = tmp_path_factory.mktemp("messages")
    jobs = {}
    for name, (content, args, env) in CASES.items():
        path = DIGITS
        if content is not None:
            path = folder / f"{name}.yaml"
            path.write_bytes(content)
        jobs[name] = (["validate", str(path), *args], env, subprocess.PIPE)
    # closed below, once every job has written to it
    full = open("/dev/full", "w") if Path("/dev/full").exists() else None  # noqa: SIM115
    if full:  # printing the schema fails: not the user's doing
        jobs["internal"] = (["schema"], {"TMPDIR": str(folder)}, full)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(trainflow, *job) for name, job in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    if full:
        full.close()
    return done


def one_message(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1 and result.stderr.startswith("error: ")
    return result.stderr


@pytest.mark.slow
def test_a_spec_that_is_a_list_or_a_string(results):
    assert (
        "(top level): expected a mapping of sections" in one_message(results["top_level_list"])
        and "got a list" in results["top_level_list"].stderr
    )
    assert "got a string" in one_message(results["top_level_string"])


@pytest.mark.slow
def test_a_binary_spec_file(results):
    message = one_message(results["binary_file"])
    assert "binary_file.yaml" in message and "not UTF-8 text" in message


@pytest.mark.slow
def test_a_duplicate_key_names_the_key_and_its_line(results, tmp_path):
    message = one_message(results["duplicate_key"])
    assert "line 3: duplicate key 'name' (first at line 1)" in message
    # A merge key (`<<`) is no duplicate: the mapping's own key wins over the merged one.
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: m\ndata:\n  source: {type: sklearn, dataset: iris}\n"
        "  steps: [{type: split}]\nmodel: {type: mlp}\n"
        "train:\n  <<: {epochs: 2, lr: 0.01}\n  epochs: 5\n"
    )
    spec = load_spec(path)
    assert (spec.train.epochs, spec.train.lr) == (5, 0.01)


@pytest.mark.slow
def test_an_override_of_a_transform_without_a_name(results):
    message = one_message(results["transform_without_name"])
    assert "train.augment.transforms.0.name: Field required" in message
    assert "train.augment.transforms.0.type: unknown key 'type'" in message


@pytest.mark.slow
def test_a_fault_of_trainflow_is_one_line_and_exit_code_1(results):
    if "internal" not in results:
        pytest.skip("needs /dev/full")
    result = results["internal"]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error (OSError")
    written = Path(lines[0].split("written to ")[1].split(" ")[0])
    assert "Traceback" in written.read_text()


def test_with_trainflow_debug_a_fault_prints_its_traceback(monkeypatch, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setenv("TRAINFLOW_DEBUG", "1")
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert main(["schema"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("internal error")


# ---- the same rules, in-process, for the rest of the bad inputs ------------------------------


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochz=3", "train.epochz: unknown key 'epochz'; did you mean `epochs`?"),
        ("model.activation=rleu", "(got 'rleu'); did you mean `relu`?"),
        ("train.optimizer.type=adamm", "did you mean `adam`?"),
        ("data.steps.0.type=splitt", "did you mean `split`?"),
        ("train.schedule={type: cosin}", "did you mean `cosine`?"),
        (
            "orchestration.steps={trian: {retries: 1}}",
            "unknown step(s) 'trian'; did you mean `train`?",
        ),
        ("train.augment.transforms.0={name: HorizontalFlp}", "did you mean `HorizontalFlip`?"),
        ("data..source.path=/etc/passwd", "empty segment in key path 'data..source.path'"),
        ("train.lr=[1", "the value of train.lr: line 1, column 3: invalid YAML"),
        ("train={a: 1, a: 2}", "the value of train: line 1: duplicate key 'a'"),
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
    ],
)
def test_mistakes_in_overrides_name_the_path_and_the_closest_value(capsys, override, expected):
    assert expected in error_of(capsys, ["validate", DIGITS, "--set", override])


def test_an_unknown_task_says_which_one_was_meant(capsys):
    assert "unknown step 'trian'; did you mean `train`?" in error_of(
        capsys, ["task", "trian", "--spec", DIGITS]
    )


def test_an_unknown_pipeline_says_which_one_was_meant(monkeypatch):
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(ROOT / "pipelines"))
    with pytest.raises(SpecError, match="did you mean `digits_cnn`"):
        spec_file("digits_cn")


HOSTILE = {
    "a: " + "[" * 5000 + "]" * 5000: "nested more than 32 levels deep",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(  # 10^9 values through aliases
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    ): "more than 100000 values",
    "name: x\n\tdata: 1\n": "line 2",
    "!!python/object/apply:os.system [echo hi]": "invalid YAML",
}


def test_hostile_yaml_is_one_message(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    for content, expected in HOSTILE.items():
        path.write_text(content)
        assert expected in error_of(capsys, ["validate", str(path)])
    assert main(["validate", DIGITS, "--set", "name.x=1"]) == 2
    assert "name.x: cannot set a key inside a str" in capsys.readouterr().err


def test_a_folder_or_a_huge_file_is_not_a_spec(tmp_path, capsys):
    assert "not a file" in error_of(capsys, ["validate", str(tmp_path)])
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (11 * 2**20))
    assert "a spec is at most" in error_of(capsys, ["validate", str(huge)])


def test_an_error_inside_a_task_is_printed_once_without_tracebacks(
    tmp_path, capfd, caplog, prefect_engine
):
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    missing = tmp_path / "weights.pt"
    argv = [
        "run",
        str(spec),
        "--set",
        f"outputs.store={tmp_path / 'store'}",
        "--set",
        f"outputs.runs={tmp_path / 'runs'}",
        "--set",
        "train.epochs=1",
        "--set",
        f"train.pretrained.path={missing}",
        "--set",
        "evaluate.cv=null",
        "--set",
        "ensemble=null",
    ]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.count(f"error: train.pretrained.path: no such file: {missing}") == 1
    # Prefect's own logs of it (console and UI): one line, where the task failed, no traceback
    records = [r for r in caplog.records if r.name.startswith("prefect.")]
    assert not any(r.exc_info or r.exc_text for r in records)
    logged = [r.getMessage() for r in records if str(missing) in r.getMessage()]
    assert logged == [
        f"Task run failed: TrainflowError: train.pretrained.path: no such file: {missing}"
    ]
