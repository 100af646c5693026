"""Folding fitted data steps into an exported graph: the folded operations, fed the raw
numeric columns (after the sidecar's outside work on text columns), give the network the
very input that the steps' own prediction mode gives it; steps that cannot be folded are
refused by name."""

import numpy as np
import polars as pl
import pytest
import torch

from trainflow import registry
from trainflow.folding import ExportError, build_prep, plan
from trainflow.package import PackageStep
from trainflow.tables import IMAGE_COLUMN, TableSchema, feature_array
from trainflow.tasks.package import AT_PREDICTION


def runtime_input(raw: pl.DataFrame, sidecar: dict) -> np.ndarray:
    """What a serving runtime feeds the graph, done from the sidecar alone: its `outside`
    steps in order, then the input columns as float32, missing values as NaN."""
    frame = raw
    for step in sidecar["outside"]:
        column = pl.col(step["column"])
        if "fill_missing" in step:
            frame = frame.with_columns(column.fill_null(step["fill_missing"]))
        elif step["method"] == "one_hot":
            frame = frame.with_columns(
                (column.cast(pl.String) == c).fill_null(False).cast(pl.Float32).alias(name)
                for c, name in zip(step["categories"], step["columns"])
            )
        else:
            codes = {c: i for i, c in enumerate(step["categories"])}
            frame = frame.with_columns(
                column.cast(pl.String).replace_strict(codes, default=-1, return_dtype=pl.Int32)
            )
    shape = sidecar["input"]["shape"]
    if len(shape) == 4:  # images: the raw pixels, (C, H, W) per row
        return np.asarray(frame["image"].to_list(), np.float32).reshape(-1, *shape[1:])
    return frame.select(sidecar["input"]["columns"]).cast(pl.Float32).to_numpy()


def rows(n: int = 300, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    missing = rng.random(n) < 0.1
    return pl.DataFrame(
        {
            "count": pl.Series(
                [None if m else int(v) for m, v in zip(missing, rng.integers(-50, 5000, n))],
                dtype=pl.Int64,
            ),
            "ratio": np.where(rng.random(n) < 0.1, np.nan, rng.normal(3, 2, n)),
            "heavy": rng.standard_t(2, n) * 100,
            "whole": rng.integers(0, 100, n),  # an integer column the clip bounds cut
            "kind": pl.Series([None if r < 0.1 else "abc"[int(r * 3)] for r in rng.random(n)]),
            "y": rng.choice(["no", "yes"], n),
        }
    )


def fitted(frame: pl.DataFrame, schema: TableSchema, steps: list) -> list[PackageStep]:
    """Each step fitted on the rows as the steps before it left them, as training fits."""
    packaged = []
    for params in steps:
        entry = registry.STEPS[params.type]
        state = entry.fit(frame, schema, params, 0)
        frame, schema = entry.apply(frame, schema, params, state)
        frame = frame.lazy().collect()
        packaged.append(
            PackageStep(type=params.type, params=params.model_dump(mode="json"), state=state)
        )
    return packaged


def at_prediction(frame: pl.DataFrame, schema: TableSchema, steps: list[PackageStep]) -> np.ndarray:
    """The network's input as the package predictor computes it: each step's prediction
    mode with its fitted state, then the feature array."""
    for step in steps:
        apply = AT_PREDICTION[step.type][0]
        params = registry.STEPS[step.type].params.model_validate(step.params)
        frame, schema = apply(frame, schema, params, step.state)
        frame = frame.lazy().collect()
    return feature_array(frame, schema)


def folded(
    frame: pl.DataFrame, schema: TableSchema, types: dict[str, str], steps: list[PackageStep]
) -> tuple[np.ndarray, dict]:
    walked = plan(schema, types, steps)
    shape = schema.image_shape or [len(walked.features)]
    prep = build_prep(walked, walked.inputs, shape)
    width = list(schema.image_shape) if schema.image_shape else [len(walked.inputs)]
    sidecar = {
        "outside": walked.outside,
        "input": {"columns": walked.inputs, "shape": ["batch", *width]},
    }
    with torch.no_grad():
        return prep(torch.from_numpy(runtime_input(frame, sidecar))).numpy(), sidecar


def step(kind: str, **params):
    return registry.STEPS[kind].params(type=kind, **params)


TABULAR = TableSchema(
    target="y", features=["count", "ratio", "heavy", "whole", "kind"], classes=["no", "yes"]
)


# a fill value of 0 is a fill like any other (the constant variant, with ordinal codes)
CLEAN = {"one_hot": {"missing": "median"}, "ordinal": {"missing": "constant", "fill_value": 0}}


@pytest.mark.parametrize("method", ["standard", "minmax", "robust", "max_abs", "log1p"])
@pytest.mark.parametrize("encoding", ["one_hot", "ordinal"])
def test_folded_steps_give_the_network_what_the_predictor_gives(method, encoding):
    train, scored = rows(seed=0), rows(seed=1)
    steps = fitted(
        train,
        TABULAR,
        [
            step("outliers", method="iqr", threshold=0.5),  # clips, on the integer column too
            step("clean", **CLEAN[encoding]),
            step("encode", method=encoding),
            step("normalize", method=method),
            step("anomalies", method="zscore", action="flag", threshold=1.5),
        ],
    )
    types = {c: str(t) for c, t in scored.schema.items()}
    got, sidecar = folded(scored, TABULAR, types, steps)
    expected = at_prediction(scored, TABULAR, steps)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert np.abs(got - expected).max() <= 1e-6
    assert [s["step"] for s in sidecar["outside"]] == ["clean", "encode"]  # the text column
    assert expected[:, -1].min() == 0 and expected[:, -1].max() == 1  # the anomaly flag
    assert scored["ratio"].is_nan().any() and scored["count"].null_count()


def test_a_missing_value_no_step_fills_stays_missing():
    train, scored = rows(seed=0), rows(seed=1)
    schema = TABULAR.model_copy(update={"features": ["ratio", "heavy"]})
    steps = fitted(train, schema, [step("normalize", method="standard")])
    got, _ = folded(scored, schema, {c: str(t) for c, t in scored.schema.items()}, steps)
    assert np.array_equal(np.isnan(got[:, 0]), scored["ratio"].is_nan().to_numpy())


def test_images_are_scaled_per_channel_in_the_graph():
    rng = np.random.default_rng(0)
    pixels = [rng.uniform(0, 16 * (1 + i % 2), 2 * 3 * 3).astype(np.float32) for i in range(40)]
    frame = pl.DataFrame({IMAGE_COLUMN: pixels, "y": ["no", "yes"] * 20}).with_columns(
        pl.col(IMAGE_COLUMN).cast(pl.List(pl.Float32))
    )
    schema = TableSchema(
        target="y", features=[IMAGE_COLUMN], classes=["no", "yes"], image_shape=[2, 3, 3]
    )
    for method in ("standard", "log1p"):
        steps = fitted(frame, schema, [step("normalize", method=method)])
        got, _ = folded(frame, schema, {IMAGE_COLUMN: "List(Float32)", "y": "String"}, steps)
        assert np.abs(got - at_prediction(frame, schema, steps)).max() <= 1e-6


@pytest.mark.parametrize(
    ("kind", "params", "named"),
    [
        ("normalize", {"method": "quantile"}, "method quantile"),
        ("smooth", {"columns": ["ratio"], "window": 3}, "rolling windows"),
        ("clean", {"missing": "forward_fill"}, "missing: forward_fill"),
    ],
)
def test_steps_that_cannot_be_folded_are_refused_by_name(kind, params, named):
    train = rows().select("ratio", "heavy", "y").with_columns(pl.col("ratio").fill_nan(0.0))
    schema = TABULAR.model_copy(update={"features": ["ratio", "heavy"]})
    steps = fitted(train, schema, [step(kind, **params)])
    with pytest.raises(ExportError, match=named) as refused:
        plan(schema, {c: str(t) for c, t in train.schema.items()}, steps)
    assert f"{kind} step" in str(refused.value)


def test_every_step_a_package_holds_is_folded_or_refused_by_export():
    from trainflow.folding import _HANDLERS

    assert set(AT_PREDICTION) <= set(_HANDLERS)


def test_the_command_offers_the_formats_export_writes():
    from trainflow.cli_parser import EXPORT_FORMATS
    from trainflow.export import FORMATS

    assert EXPORT_FORMATS == FORMATS
