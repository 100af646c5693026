"""No dead knobs: every leaf of the spec schema is read by the code that runs a pipeline, and
every field reaches the cache key of the task its section is given to (a section enters a
key as its whole dump, so a field left out of dumps could not change a result); the few
fields that only document are listed below, each with its reason.

The walk covers every field of every section and of every member of every union (steps,
sources, models, optimizers, schedules, ...), and every property a spec class defines (a
derived knob such as EarlyStopping.mode). "Read" is checked on the source: the field's name
is read as an attribute (`params.sparsity`), a string key or a builder's parameter (fields
handed on by `model_dump()` / `builder_kwargs()`) in code outside the spec's validators; a
name that several spec classes share must be read in a module that names its class or its
parent field, so that `loader.mode` does not vouch for `early_stopping.mode`.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from trainflow.caching import canonical
from trainflow.spec.pipeline import PipelineSpec, load_spec
from trainflow.spec.train import TrainSpec

ROOT = Path(__file__).resolve().parents[2]
CODE = (
    list((ROOT / "src" / "trainflow").rglob("*.py"))
    + list((ROOT / "tasks").glob("*.py"))
    + list((ROOT / "flows").glob("*.py"))
)

# Fields that document rather than steer, reviewed: path (as the walk names it) -> reason.
DOCUMENTING = {
    "name": "the pipeline's name: names runs, deployments and the champion, not a result",
    # strategies in spec.distributed.NOT_BUILT: validated, refused until their engine lands
    "train.distributed.world_size": "read by the engines of NOT_BUILT strategies",
    # quantize auto: the run's latency step reads auto's own latency_repeats (the flow times
    # the kept model); a candidate method's is only recorded among the params it was tried with
    "compress.quantize[auto].methods[dynamic_int8].latency_repeats": "auto's own is read",
    "compress.quantize[auto].methods[static_int8].latency_repeats": "auto's own is read",
}


def models_in(annotation) -> list[type[BaseModel]]:
    """The spec classes an annotation holds (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += models_in(arg)
    return found


def leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type, str]]:
    """(path, owner class, name) of every leaf field and property under `model`."""
    out = []
    for name, field in model.model_fields.items():
        inner = models_in(field.annotation)
        if not inner:
            out.append((prefix + name, model, name))
        for member in dict.fromkeys(inner):
            kind = member.model_fields.get("type")
            tag = (
                f"[{'|'.join(typing.get_args(kind.annotation))}]" if kind and len(inner) > 1 else ""
            )
            out += leaves(member, f"{prefix}{name}{tag}.")
    for name, value in vars(model).items():
        if isinstance(value, property) and not name.startswith("_"):
            out.append((prefix + name, model, name))
    return out


def is_validator(node: ast.FunctionDef) -> bool:
    return any("validator" in ast.unparse(d) for d in node.decorator_list)


def reads() -> dict[str, set[Path]]:
    """name -> the modules that read it (attribute loads, string constants, parameters of
    the builders and implementations that receive a dumped section), validators left out."""
    found: dict[str, set[Path]] = {}
    for path in CODE:
        tree = ast.parse(path.read_text())
        skipped = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and is_validator(f)
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            elif isinstance(node, ast.arg) and "spec" not in path.parts:
                name = node.arg
            else:
                continue
            found.setdefault(name, set()).add(path)
    return found


ALL = leaves(PipelineSpec)
READS = reads()
OWNERS: dict[str, set[type]] = {}
for _, _owner, _name in ALL:
    OWNERS.setdefault(_name, set()).add(_owner)


def is_read(path: str, owner: type, name: str) -> bool:
    modules = {
        m for m in READS.get(name, set()) if not (m.parent.name == "spec" and m.name != "model.py")
    }
    modules |= {
        m
        for m in READS.get(name, set())
        if m.parent.name == "spec" and f"self.{name}" in m.read_text()
    }  # read by a spec method a task calls
    if len(OWNERS[name]) == 1:
        return bool(modules)
    parent = path.split(".")[-2].split("[")[0] if "." in path else ""
    return any(
        owner.__name__ in m.read_text() or (parent and parent in m.read_text()) for m in modules
    )


def test_the_walk_covers_every_section_union_member_and_derived_knob():
    paths = {path for path, _, _ in ALL}
    assert {
        "train.threads",
        "train.precision",
        "train.early_stopping.mode",
        "train.pretrained.path",
        "compress.prune[l1_unstructured].finetune_lr",  # a union since structured pruning
        "compress.prune[l1_structured|l2_structured].steps",
    } <= paths
    assert any(p.startswith("data.steps[normalize].") for p in paths)
    assert any(p.startswith("train.optimizer[sgd].") for p in paths)
    assert "train.start" not in paths  # removed: pretrained says it
    assert len(paths) > 150


@pytest.mark.parametrize("path,owner,name", ALL, ids=[p for p, _, _ in ALL])
def test_every_leaf_is_read_by_the_code_or_documents(path, owner, name):
    if path in DOCUMENTING:
        return
    assert is_read(path, owner, name), (
        f"{path} ({owner.__name__}.{name}) is read by no code that runs a pipeline: wire it "
        f"to the line that uses it, remove it, or list it in DOCUMENTING with a reason"
    )


def test_documenting_fields_exist():
    paths = {path for path, _, _ in ALL}
    assert set(DOCUMENTING) <= paths


def test_no_field_is_left_out_of_the_dump_that_keys_its_task():
    excluded = [
        path
        for path, owner, name in ALL
        if name in owner.model_fields and owner.model_fields[name].exclude
    ]
    assert excluded == []
    # and a changed leaf changes the key: one leaf per section of the shipped CNN pipeline
    spec = load_spec(ROOT / "pipelines" / "digits_cnn.yaml")
    for section, change in [
        ("train", {"batch_size": 7}),
        ("train", {"threads": 1}),
        ("model", {"dropout": 0.1}),
        ("evaluate", {"metrics": ["accuracy"]}),
    ]:
        part = getattr(spec, section)
        assert canonical(part.model_copy(update=change)) != canonical(part), (section, change)


@pytest.mark.parametrize(
    "change", [{"threads": 1}, {"threads": 2}, {"precision": "fp32"}, {"precision": "bf16"}]
)
def test_the_compute_knobs_enter_the_train_key(change):
    """`auto` and each explicit value are different keys: an explicit choice is never served
    a model that `auto` trained on some machine, nor the other way round."""
    assert canonical(TrainSpec(**change)) != canonical(TrainSpec())


@pytest.mark.slow
def test_a_spec_that_still_sets_start_is_told_the_fix(tmp_path):
    import subprocess
    import sys

    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "trainflow.cli", "validate", str(spec), "--set", "train.start=warm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert (
        "train.start ('warm') was removed: `pretrained` alone says how training starts"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
