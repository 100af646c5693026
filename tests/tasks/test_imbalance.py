"""Encoding and resampling: exactly imbalanced-learn's output, on the training part only."""

import numpy as np
import polars as pl
import pytest

from trainflow.errors import SpecError
from trainflow.spec.pipeline import validate_spec
from trainflow.steps import read_parts
from trainflow.tasks.encode import EncodeParams, encode
from trainflow.tasks.fold import fold_data
from trainflow.tasks.ingest import FileSource, SklearnSource, ingest
from trainflow.tasks.resample import ResampleParams, resample
from trainflow.tasks.split import SplitParams, split
from trainflow.transforms.resample import SAMPLERS


@pytest.fixture(scope="module")
def cancer_splits(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    return store, split.fn(table, SplitParams(type="split"), 0, store)


@pytest.mark.parametrize("method", sorted(set(SAMPLERS) - {"smotenc"}))
def test_resampling_equals_imbalanced_learn_and_spares_val_and_test(cancer_splits, method):
    store, splits = cancer_splits
    params = ResampleParams(type="resample", method=method)
    out = resample.fn(splits, params, 7, store)
    before, after = read_parts(splits), read_parts(out)
    df, schema = before["train"]
    kwargs = (
        {"random_state": 7}
        if method not in ("tomek_links", "edited_nearest_neighbours", "near_miss")
        else {}
    )
    x, y = SAMPLERS[method](**kwargs).fit_resample(
        df.select(schema.features).to_numpy(), df["target"].to_numpy()
    )
    got = after["train"][0]
    assert np.array_equal(got.select(schema.features).to_numpy(), x)
    assert got["target"].to_list() == list(y)
    for part in ("val", "test"):  # never resampled
        assert after[part][0].equals(before[part][0])
    counts = out.meta["parts"]["train"]["classes"]
    assert sum(counts.values()) == len(y)


def test_smotenc_with_a_categorical_column(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,colour,label"] + [
        f"{rng.normal():.4f},{['red', 'blue'][i % 2]},{'rare' if i < 12 else 'common'}"
        for i in range(60)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(tmp_path / "d.csv"), target="label"), store)
    parts = split.fn(table, SplitParams(type="split", validation=0.2, test=0.2), 0, store)
    encoded = encode.fn(parts, EncodeParams(type="encode", method="ordinal"), 0, store)
    params = ResampleParams(
        type="resample", method="smotenc", options={"categorical_features": [1], "k_neighbors": 3}
    )
    out = read_parts(resample.fn(encoded, params, 0, store))["train"][0]
    counts = out["label"].value_counts()
    assert (
        dict(zip(counts["label"], counts["count"]))["rare"]
        == dict(zip(counts["label"], counts["count"]))["common"]
    )
    assert set(out["colour"].unique()) <= {0, 1}  # categories stay categories


def test_one_hot_and_ordinal_encoding_learn_categories_from_train(tmp_path):
    path = tmp_path / "c.csv"
    colours = ["red", "blue"] * 15 + ["green"] * 2  # green is rare: may miss the training part
    path.write_text(
        "colour,x,label\n" + "".join(f"{c},{i},{'ab'[i % 2]}\n" for i, c in enumerate(colours))
    )
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    parts = split.fn(table, SplitParams(type="split"), 0, store)
    hot = read_parts(encode.fn(parts, EncodeParams(type="encode"), 0, store))
    train_colours = set(read_parts(parts)["train"][0]["colour"])
    df, schema = hot["train"]
    assert schema.features == [f"colour={c}" for c in sorted(train_colours)] + ["x"]
    assert (df.select(schema.features[:-1]).sum_horizontal() == 1).all()
    ordinal = read_parts(encode.fn(parts, EncodeParams(type="encode", method="ordinal"), 0, store))
    assert ordinal["train"][0]["colour"].dtype == pl.Int32
    assert set(ordinal["test"][0]["colour"]) <= set(range(len(train_colours))) | {-1}


def test_text_features_without_encode_are_a_clear_error(tmp_path):
    from trainflow.errors import DataError
    from trainflow.tasks.shard import ShardParams, shard

    path = tmp_path / "t.csv"
    path.write_text(
        "colour,label\n" + "".join(f"{'rb'[i % 2]},{'xy'[i % 3 == 0]}\n" for i in range(40))
    )
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    with pytest.raises(DataError, match=r"\['colour'\] hold text.*`encode`"):
        shard.fn(split.fn(table, SplitParams(type="split"), 0, store), ShardParams(), store)


def test_resampling_inside_cv_folds_touches_fold_training_rows_only(cancer_splits):
    _, splits = cancer_splits
    steps = [ResampleParams(type="resample", method="random_over")]
    plain = fold_data(splits, 0, 3, [], 0).data
    resampled = fold_data(splits, 0, 3, steps, 0).data
    assert len(resampled["train"]) > len(plain["train"])
    assert (
        np.bincount(resampled["train"].y.numpy()).tolist()
        == [np.bincount(plain["train"].y.numpy()).max()] * 2
    )
    assert resampled["val"].y.tolist() == plain["val"].y.tolist()
    assert resampled["test"].y.tolist() == plain["test"].y.tolist()


def test_spec_rejects_resampling_before_split_and_unknown_options():
    base = {
        "name": "t",
        "model": {"type": "mlp"},
        "data": {"source": {"type": "sklearn", "dataset": "iris"}},
    }
    with pytest.raises(SpecError, match="training part only and must come after `split`"):
        validate_spec(
            {
                **base,
                "data": {
                    **base["data"],
                    "steps": [{"type": "resample", "method": "smote"}, {"type": "split"}],
                },
            }
        )
    with pytest.raises(SpecError, match=r"smote has no option\(s\) \['k'\].*k_neighbors"):
        validate_spec(
            {
                **base,
                "data": {
                    **base["data"],
                    "steps": [
                        {"type": "split"},
                        {"type": "resample", "method": "smote", "options": {"k": 3}},
                    ],
                },
            }
        )


def test_k_neighbors_not_below_the_smallest_class_is_named(tmp_path):
    from trainflow.errors import DataError

    rows = ["a,label"] + [f"{i},{'rare' if i < 8 else 'common'}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(tmp_path / "d.csv"), target="label"), store)
    parts = split.fn(table, SplitParams(type="split", validation=0.2, test=0.2), 0, store)
    rare = parts.meta["parts"]["train"]["classes"]["rare"]
    assert rare < 6
    params = ResampleParams(type="resample", method="smote", options={"k_neighbors": 6})
    with pytest.raises(DataError, match=rf"smote\): k_neighbors=6 .* class 'rare' has {rare} row"):
        resample.fn(parts, params, 0, store)


def test_a_step_that_empties_a_part_is_a_clear_error(tmp_path):
    from trainflow.errors import DataError
    from trainflow.tasks.clean import CleanParams, clean

    (tmp_path / "d.csv").write_text("a,label\n" + "".join(f",{'xy'[i % 2]}\n" for i in range(10)))
    store = str(tmp_path / "store")
    table = ingest.fn(FileSource(type="csv", path=str(tmp_path / "d.csv"), target="label"), store)
    with pytest.raises(DataError, match="step 'clean' left no rows in all"):
        clean.fn(table, CleanParams(type="clean", missing="drop"), 0, store)


def test_unseen_category_policy(tmp_path):
    from trainflow.errors import DataError
    from trainflow.tables import TableSchema
    from trainflow.transforms.encode import apply, fit

    schema = TableSchema(target="y", features=["c"], classes=["a", "b"])
    train = pl.DataFrame({"c": ["red", "blue"], "y": ["a", "b"]})
    test = pl.DataFrame({"c": ["green"], "y": ["a"]})
    lenient = EncodeParams(type="encode")
    out, _ = apply(test, schema, lenient, fit(train, schema, lenient))
    assert out.select("c=blue", "c=red").row(0) == (0.0, 0.0)
    strict = EncodeParams(type="encode", unknown="error")
    with pytest.raises(DataError, match=r"column 'c' has categories \['green'\] not seen"):
        apply(test, schema, strict, fit(train, schema, strict))


@pytest.mark.parametrize("method", ["gaussian_mixture", "interpolate"])
def test_synthesis_fills_scarce_classes_in_train_only_and_marks_rows(cancer_splits, method):
    from trainflow.tasks.synthesize import SynthesizeParams, synthesize

    store, splits = cancer_splits
    out = synthesize.fn(splits, SynthesizeParams(type="synthesize", method=method), 0, store)
    before, after = read_parts(splits), read_parts(out)
    train = after["train"][0]
    counts = train["target"].value_counts()
    assert len(set(counts["count"])) == 1  # classes balanced
    real = train.filter(pl.col("synthetic") == 0).drop("synthetic")
    assert real.equals(before["train"][0])  # real rows untouched, marked 0
    fake = train.filter(pl.col("synthetic") == 1)
    assert set(fake["target"]) == {"malignant"} and len(fake) > 0
    column = before["train"][1].features[0]
    lo, hi = before["train"][0][column].min(), before["train"][0][column].max()
    assert fake[column].min() > lo - (hi - lo) and fake[column].max() < hi + (hi - lo)
    for part in ("val", "test"):  # never synthesized
        assert after[part][0].equals(before[part][0])
    again = read_parts(
        synthesize.fn(splits, SynthesizeParams(type="synthesize", method=method), 0, store + "2")
    )["train"][0]
    assert again.equals(train)  # seeded
