"""Mutated shipped specs fail only with trainflow's own errors, never with a traceback."""

import copy
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PIPELINES
from trainflow.engine.checks import check_model_and_training
from trainflow.errors import TrainflowError
from trainflow.spec.pipeline import PipelineSpec, apply_override, load_spec, validate_spec

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SHIPPED = [yaml.safe_load(path.read_text()) for path in PIPELINES]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from([0, -1, 1e12, math.inf, -math.inf, math.nan, "", "auto", "..", "/", "type"]),
    st.text(max_size=12),
    st.binary(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
    ),
    max_leaves=6,
)
SETTINGS = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def paths(node, prefix=()):
    """Every (path, value) in a raw spec."""
    yield prefix, node
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        yield from paths(value, (*prefix, key))


def parent(raw, path):
    for key in path[:-1]:
        raw = raw[key]
    return raw


def mutate(raw, data) -> object:
    """One of: drop a key, rename it, give it another value (scalar, list for a mapping, ...)."""
    path, value = data.draw(st.sampled_from(list(paths(raw))))
    kind = data.draw(st.sampled_from(["drop", "rename", "scalar", "value", "list", "mapping"]))
    replacement = {
        "scalar": SCALARS,
        "value": VALUES,
        "list": st.just([value]),
        "mapping": st.just({"type": value}),
    }.get(kind)
    if not path:
        return data.draw(replacement) if replacement is not None else raw
    container, key = parent(raw, path), path[-1]
    if kind == "drop":
        container.pop(key) if isinstance(container, dict) else container.pop(key)
    elif kind == "rename" and isinstance(container, dict):
        new = data.draw(st.one_of(st.text(max_size=10), st.just(f"{key}s"), st.integers()))
        container[new] = container.pop(key)
    elif replacement is not None:
        container[key] = data.draw(replacement)
    return raw


def only_trainflow_errors(action) -> None:
    """The action ends in a valid spec or in a trainflow error with a message; any other
    exception propagates and fails the test."""
    try:
        spec = action()
    except TrainflowError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)
        return
    assert isinstance(spec, PipelineSpec)
    check_model_size_or_error(spec)


def check_model_size_or_error(spec) -> None:
    try:
        check_model_and_training(spec.model, spec.train, None)
    except TrainflowError:
        pass


@SETTINGS
@given(st.data())
def test_mutated_specs_validate_or_name_the_problem(data):
    raw = copy.deepcopy(data.draw(st.sampled_from(SHIPPED)))
    for _ in range(data.draw(st.integers(1, 3))):
        raw = mutate(raw, data)
    only_trainflow_errors(lambda: validate_spec(raw, "fuzzed"))


@SETTINGS
@given(st.data())
def test_overrides_of_any_key_and_value_apply_or_name_the_problem(data):
    raw = copy.deepcopy(data.draw(st.sampled_from(SHIPPED)))
    path, _ = data.draw(st.sampled_from(list(paths(raw))))
    key = ".".join(map(str, path)) + data.draw(st.sampled_from(["", ".0", ".type", "..x", "."]))
    text = data.draw(
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(
                [
                    "{type: x}",
                    "[",
                    "{a: 1, a: 2}",
                    "!!python/object:os.system ls",
                    "*x",
                    "&a [*a]",
                    "!!binary AAAA",
                    "1e12",
                    ".nan",
                    "{name: x}",
                ]
            ),
        )
    )

    def override():
        apply_override(raw, f"{key}={text}")
        return validate_spec(raw, "fuzzed")

    only_trainflow_errors(override)


@SETTINGS
@given(st.data())
def test_damaged_spec_files_load_or_name_the_problem(tmp_path_factory, data):
    text = PIPELINES[data.draw(st.integers(0, len(PIPELINES) - 1))].read_bytes()
    at = data.draw(st.integers(0, len(text)))
    noise = data.draw(st.binary(min_size=1, max_size=16))
    damaged = data.draw(
        st.sampled_from([text[:at] + noise + text[at:], text[:at], noise, text[:at] + noise])
    )
    path = tmp_path_factory.getbasetemp() / "fuzzed.yaml"
    path.write_bytes(damaged)
    only_trainflow_errors(lambda: load_spec(path))
