"""Data steps called bare (`.fn`): ingest, clean, split, normalize and shard on real files."""

import json
import subprocess

import cv2
import numpy as np
import polars as pl
import pytest
import webdataset as wds

from trainflow.errors import ArtifactError, DataError
from trainflow.shards import read_split
from trainflow.steps import read_parts
from trainflow.tables import read_table
from trainflow.tasks.clean import CleanParams, clean
from trainflow.tasks.ingest import FileSource, ImageFolderSource, SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split


@pytest.mark.parametrize(
    "dataset,rows,shape",
    [
        ("digits", 1797, [1, 8, 8]),
        ("breast_cancer", 569, [30]),
        ("wine", 178, [13]),
        ("iris", 150, [4]),
    ],
)
def test_ingest_bundled_datasets(store, dataset, rows, shape):
    ref = ingest.fn(SklearnSource(type="sklearn", dataset=dataset), store)
    df, schema = read_table(ref.path / "all.parquet")
    assert ref.count == len(df) == rows
    assert schema.input_shape == shape


@pytest.fixture
def messy_csv(tmp_path):
    path = tmp_path / "messy.csv"
    path.write_text("a,b,label\n1,10,x\n,20,y\n3,,x\n1,10,x\n5,50,\n7,70,y\n")
    return path


def test_clean_strategies_on_a_csv_with_gaps(store, messy_csv):
    source = FileSource(type="csv", path=str(messy_csv), target="label")
    table = ingest.fn(source, store)
    assert table.count == 6
    dropped = read_parts(clean.fn(table, CleanParams(type="clean"), 0, store))["all"][0]
    # duplicate row, rows with a missing feature and the row without a label are gone
    assert dropped.rows() == [(1, 10, "x"), (7, 70, "y")]
    mean = clean.fn(table, CleanParams(type="clean", missing="mean"), 0, store)
    df = read_parts(mean)["all"][0]
    # the mean is taken over the rows that stay (labelled, de-duplicated): a = 1, 3, 7
    assert df["a"].to_list() == pytest.approx([1.0, 11 / 3, 3.0, 7.0])
    assert df["b"].null_count() == 0 and len(df) == 4
    median = read_parts(clean.fn(table, CleanParams(type="clean", missing="median"), 0, store))[
        "all"
    ][0]
    # median of the rows that stay: a = 1, 3, 7 -> 3; b = 10, 20, 70 -> 20
    assert median.rows() == [(1, 10, "x"), (3, 20, "y"), (3, 20, "x"), (7, 70, "y")]
    const = clean.fn(table, CleanParams(type="clean", missing="constant", fill_value=-1), 0, store)
    assert -1 in read_parts(const)["all"][0]["a"].to_list()


def test_missing_file_and_target_are_clear_errors(store, messy_csv, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        ingest.fn(FileSource(type="csv", path=str(tmp_path / "nope.csv"), target="y"), store)
    with pytest.raises(DataError, match="column 'Status' not in"):
        ingest.fn(FileSource(type="csv", path=str(messy_csv), target="Status"), store)


def test_corrupt_parquet_is_a_clear_error(store, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot read parquet file"):
        ingest.fn(FileSource(type="parquet", path=str(bad), target="y"), store)


def test_image_folder(store, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(
                str(tmp_path / "imgs" / name / f"{i}.png"),
                rng.integers(0, 255, (6, 5), dtype=np.uint8),
            )
    ref = ingest.fn(ImageFolderSource(type="image_folder", path=str(tmp_path / "imgs")), store)
    df, schema = read_table(ref.path / "all.parquet")
    assert schema.classes == ["cat", "dog"] and schema.image_shape == [1, 6, 5]
    assert df["target"].to_list() == ["cat"] * 3 + ["dog"] * 3


@pytest.fixture
def splits(store):
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    return split.fn(table, SplitParams(type="split", validation=0.2, test=0.2), 0, store)


def test_split_is_stratified_and_disjoint(splits):
    parts = read_parts(splits)
    sizes = {k: len(v[0]) for k, v in parts.items()}
    assert sum(sizes.values()) == 569 and sizes["test"] == 114
    shares = {k: (df["target"] == "benign").mean() for k, (df, _) in parts.items()}
    assert max(shares.values()) - min(shares.values()) < 0.02
    keys = [set(map(tuple, df.drop("target").rows())) for df, _ in parts.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_single_class_target_cannot_be_stratified(store, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("a,label\n" + "".join(f"{i},only\n" for i in range(20)))
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    with pytest.raises(DataError, match="single class"):
        split.fn(table, SplitParams(type="split"), 0, store)


def test_normalize_is_fitted_on_train_only(splits, store):
    scaled = normalize.fn(splits, NormalizeParams(type="normalize"), 0, store)
    raw, out = read_parts(splits), read_parts(scaled)
    state = json.loads((scaled.path / "state.json").read_text())
    column = raw["train"][1].features[0]
    assert state["shift"][column] == pytest.approx(raw["train"][0][column].mean())
    assert out["train"][0][column].mean() == pytest.approx(0, abs=1e-9)
    # validation and test are scaled with the training statistics, so they are not centred
    expected = (raw["test"][0][column] - raw["train"][0][column].mean()) / raw["train"][0][
        column
    ].std(ddof=0)
    assert np.allclose(out["test"][0][column].to_numpy(), expected.to_numpy())
    mm = normalize.fn(splits, NormalizeParams(type="normalize", method="minmax"), 0, store)
    train = read_parts(mm)["train"][0]
    assert train[column].min() == pytest.approx(0) and train[column].max() == pytest.approx(1)


def test_shards_are_deterministic_readable_and_verified(splits, store, tmp_path):
    first = shard.fn(splits, ShardParams(max_samples=100, per_record=32), store)
    tars = sorted(first.path.glob("train-*.tar"))
    before = {p.name: p.read_bytes() for p in tars}
    second = shard.fn(splits, ShardParams(max_samples=100, per_record=32), str(tmp_path / "other"))
    assert {p.name: p.read_bytes() for p in sorted(second.path.glob("train-*.tar"))} == before
    manifest = json.loads((first.path / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert [s["samples"] for s in train["shards"]] == [100, 100, 100, 41]
    assert sum(train["classes"].values()) == 341
    # plain tar and plain webdataset read them
    listing = subprocess.run(
        ["tar", "-tf", str(tars[0])], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing == [
        "train00000000.x.npy",
        "train00000000.y.npy",
        "train00000032.x.npy",
        "train00000032.y.npy",
        "train00000064.x.npy",
        "train00000064.y.npy",
        "train00000096.x.npy",
        "train00000096.y.npy",
    ]
    records = list(wds.WebDataset([str(p) for p in tars], shardshuffle=False))
    assert len(records) == 4 + 4 + 4 + 2 and set(records[0]) >= {"x.npy", "y.npy", "__key__"}
    x, y = read_split(first.path, "train")
    assert x.shape == (341, 30) and np.bincount(y).sum() == 341
    # a truncated shard is caught against the manifest, naming the shard
    tars[1].write_bytes(tars[1].read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="train-000001.tar is corrupt or truncated"):
        read_split(first.path, "train")


def test_non_finite_features_that_no_step_handles_stop_before_training(store, tmp_path):
    path = tmp_path / "inf.csv"
    rows = "".join(f"{i},{'inf' if i == 3 else i},{'ab'[i % 2]}\n" for i in range(40))
    path.write_text("a,b,label\n" + rows)
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    parts = split.fn(table, SplitParams(type="split"), 0, store)
    with pytest.raises(DataError, match=r"non-finite .* in: b \(1\)"):
        shard.fn(parts, ShardParams(), store)


def test_polars_frame_shapes_survive_parquet(store):
    ref = ingest.fn(SklearnSource(type="sklearn", dataset="digits"), store)
    df, _ = read_table(ref.path / "all.parquet")
    assert df.schema["image"] == pl.List(pl.Float32) and len(df["image"][0]) == 64


@pytest.mark.parametrize(
    "method,check",
    [
        ("robust", lambda col: abs(np.median(col)) < 1e-9),
        ("max_abs", lambda col: np.isclose(np.abs(col).max(), 1.0)),
        (
            "quantile",
            lambda col: col.min() >= 0 and col.max() <= 1 and abs(np.median(col) - 0.5) < 0.02,
        ),
    ],
)
def test_more_normalizers_are_fitted_on_train(splits, store, method, check):
    scaled = read_parts(
        normalize.fn(splits, NormalizeParams(type="normalize", method=method), 0, store)
    )
    raw = read_parts(splits)
    column = raw["train"][1].features[3]
    assert check(scaled["train"][0][column].to_numpy())
    # validation rows are mapped with the training part's statistics, not their own
    assert not check(scaled["val"][0][column].to_numpy()) or method == "quantile"


def test_log1p_and_normal_quantiles(splits, store):
    raw = read_parts(splits)["test"][0]
    column = read_parts(splits)["train"][1].features[0]
    logged = read_parts(
        normalize.fn(splits, NormalizeParams(type="normalize", method="log1p"), 0, store)
    )["test"][0]
    assert np.allclose(logged[column].to_numpy(), np.log1p(raw[column].to_numpy()))
    normal = read_parts(
        normalize.fn(
            splits, NormalizeParams(type="normalize", method="quantile", output="normal"), 0, store
        )
    )["train"][0][column].to_numpy()
    assert abs(normal.mean()) < 0.1 and 0.8 < normal.std() < 1.3 and np.isfinite(normal).all()


def test_shards_rotate_on_max_bytes(splits, store):
    ref = shard.fn(splits, ShardParams(max_samples=10_000, per_record=16, max_bytes=20_000), store)
    tars = sorted(ref.path.glob("train-*.tar"))
    assert len(tars) > 1
    assert all(p.stat().st_size <= 20_000 + 4096 for p in tars[:-1])
    manifest = json.loads((ref.path / "manifest.json").read_text())["splits"]["train"]
    assert sum(s["samples"] for s in manifest["shards"]) == 341
    x, _ = read_split(ref.path, "train")
    assert len(x) == 341


def test_forward_fill_and_duplicates_by_key(store, tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("id,t,v,label\n1,1,10,x\n1,2,,x\n2,3,30,y\n2,4,,y\n2,4,99,y\n")
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    params = CleanParams(type="clean", missing="forward_fill", drop_duplicates=["id", "t"])
    df = read_parts(clean.fn(table, params, 0, store))["all"][0]
    assert df["v"].to_list() == [10, 10, 30, 30]  # (2, 4) kept once: the first row
    back = CleanParams(type="clean", missing="backward_fill", drop_duplicates=False)
    assert read_parts(clean.fn(table, back, 0, store))["all"][0]["v"].to_list() == [
        10,
        30,
        30,
        99,
        99,
    ]
    with pytest.raises(DataError, match=r"key columns \['nope'\] are not in the table"):
        clean.fn(table, CleanParams(type="clean", drop_duplicates=["nope"]), 0, store)


def test_smoothing_methods_follow_order_and_groups(store, tmp_path):
    from trainflow.tasks.smooth import SmoothParams, smooth

    path = tmp_path / "s.csv"
    path.write_text(
        "g,t,v,label\n"
        + "".join(
            f"{'ab'[i // 4]},{3 - i % 4},{[0, 10, 0, 10][i % 4]},{'xy'[i % 2]}\n" for i in range(8)
        )
    )
    table = ingest.fn(
        FileSource(
            type="csv", path=str(path), target="label", keep_columns=["g", "t"], features=["v"]
        ),
        store,
    )
    rolled = read_table(
        smooth.fn(
            table,
            SmoothParams(type="smooth", columns=["v"], window=2, order_by="t", group_by="g"),
            0,
            store,
        ).path
        / "all.parquet"
    )[0]
    # per group, in t order (3, 2, 1, 0 -> rows reversed): v = 10, 0, 10, 0 -> 10, 5, 5, 5
    assert rolled["v"].to_list() == [5.0, 5.0, 5.0, 10.0] * 2
    ewm = read_table(
        smooth.fn(
            table,
            SmoothParams(type="smooth", columns=["v"], method="exponential", alpha=0.5),
            0,
            store,
        ).path
        / "all.parquet"
    )[0]
    assert ewm["v"].to_list()[:3] == [0.0, 5.0, 2.5]
    gauss = read_table(
        smooth.fn(
            table, SmoothParams(type="smooth", columns=["v"], method="gaussian", window=3), 0, store
        ).path
        / "all.parquet"
    )[0]
    assert 0 < gauss["v"][1] < 10 and gauss["v"].std() < 5


@pytest.mark.slow
def test_offline_expansion_writes_augmented_copies_of_train_only(tmp_path):
    from trainflow.spec.augment import AugmentSpec, TransformSpec
    from trainflow.tasks.shard import ExpandSpec

    store = str(tmp_path / "store")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="digits"), store)
    parts = split.fn(table, SplitParams(type="split"), 0, store)
    erasing = AugmentSpec(transforms=[TransformSpec(name="Erasing", params={"p": 1.0})])
    params = ShardParams(expand=ExpandSpec(copies=2, augment=erasing))
    ref = shard.fn(parts, params, store, 0)
    plain = shard.fn(parts, ShardParams(), store, 0)
    x, y = read_split(ref.path, "train")
    x0, y0 = read_split(plain.path, "train")
    n = len(x0)
    assert len(x) == 3 * n and np.array_equal(y, np.concatenate([y0] * 3))
    assert np.array_equal(x[:n], x0)  # originals first, unchanged
    assert not np.array_equal(x[n : 2 * n], x0) and not np.array_equal(x[n : 2 * n], x[2 * n :])
    for name in ("val", "test"):  # never expanded
        assert np.array_equal(read_split(ref.path, name)[0], read_split(plain.path, name)[0])
    again = shard.fn(parts, params, str(tmp_path / "again"), 0)
    assert again.fingerprint == ref.fingerprint  # seeded: identical bytes


def test_missing_feature_column_and_mixed_image_sizes_are_named(store, messy_csv, tmp_path):
    source = FileSource(type="csv", path=str(messy_csv), target="label", features=["a", "z"])
    with pytest.raises(
        DataError, match=r"columns \['z'\] not in .*columns are \['a', 'b', 'label'\]"
    ):
        ingest.fn(source, store)
    for name, shape in (("cat", (6, 5)), ("dog", (7, 5))):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "imgs" / name / "0.png"), np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=r"has shape \(1, 7, 5\), the first image has \(1, 6, 5\)"):
        ingest.fn(ImageFolderSource(type="image_folder", path=str(tmp_path / "imgs")), store)


@pytest.mark.parametrize("subset", [None, ["a", "b"], ["image"]])
def test_duplicate_search_keeps_the_rows_polars_unique_keeps(subset):
    """first_rows hashes rows and compares in full only rows whose hashes repeat: the same
    rows as polars' unique(keep='first', maintain_order=True), also when every hash collides
    (a constant hash) or many do, with nulls, NaN, -0.0 and list (image) columns."""
    from trainflow.tables import first_rows, keep_rows

    rng = np.random.default_rng(1)
    n = 5000
    a = rng.integers(0, 5, n).astype(float)
    a[rng.random(n) < 0.1] = np.nan
    a[rng.random(n) < 0.05] = -0.0
    df = pl.DataFrame(
        {
            "a": a,
            "b": rng.choice(["x", "y", ""], n),
            "c": rng.integers(0, 3, n),
            "image": [[float(v), 1.0] for v in rng.integers(0, 2, n)],
        }
    ).with_columns(pl.col("b").replace("", None))
    expected = df.unique(subset=subset, keep="first", maintain_order=True)
    assert 0 < len(expected) < n
    colliding = [df["c"].to_numpy().astype(np.uint64) * 0, df["c"].to_numpy().astype(np.uint64)]
    for hashes in [None] + colliding:
        keep = first_rows(df.lazy(), subset, hashes)
        assert keep_rows(df.lazy(), keep).collect().equals(expected)


def test_a_parquet_source_that_already_is_the_table_is_stored_as_is(store, tmp_path):
    """ingest copies the bytes of a Parquet file whose columns and types it would keep (the
    schema goes in a file beside it) and rewrites any other; both read the same."""
    rng = np.random.default_rng(0)
    frame = pl.DataFrame(
        {
            "x": rng.normal(size=300),
            "colour": rng.choice(["r", "g"], 300),
            "label": rng.choice(["a", "b"], 300),
        }
    )
    ready = tmp_path / "ready.parquet"
    frame.write_parquet(ready, row_group_size=100)
    table = ingest.fn(FileSource(type="parquet", path=str(ready), target="label"), store)
    assert (table.path / "all.parquet").read_bytes() == ready.read_bytes()
    assert sorted(p.name for p in table.path.iterdir()) == [
        "all.parquet",
        "all.schema.json",
        "ref.json",
    ]
    df, schema = read_parts(table)["all"]
    assert df.equals(frame) and schema.classes == ["a", "b"] and table.count == 300
    assert table.meta["parts"]["all"]["classes"] == {
        "a": int((frame["label"] == "a").sum()),
        "b": int((frame["label"] == "b").sum()),
    }

    numbered = tmp_path / "numbered.parquet"  # integer labels become text: rewritten
    frame.with_columns(label=(pl.col("label") == "b").cast(pl.Int64)).write_parquet(numbered)
    table = ingest.fn(FileSource(type="parquet", path=str(numbered), target="label"), store)
    assert sorted(p.name for p in table.path.iterdir()) == ["all.parquet", "ref.json"]
    assert (
        read_parts(table)["all"][0]["label"].to_list()
        == frame["label"].replace({"a": "0", "b": "1"}).to_list()
    )
    picked = ingest.fn(
        FileSource(type="parquet", path=str(ready), target="label", features=["x"]), store
    )  # a column left out: rewritten
    assert read_parts(picked)["all"][0].columns == ["x", "label"]


@pytest.mark.parametrize("keys", [True, ["a", "b"]])
def test_a_row_that_filling_makes_a_duplicate_is_dropped(store, tmp_path, keys):
    """Duplicates are searched again after filling (only the filled rows are hashed again):
    (3, missing) filled with b's median 20 repeats the earlier (3, 20)."""
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,label\n1,10,x\n3,20,x\n3,,x\n5,30,y\n1,10,x\n")
    table = ingest.fn(FileSource(type="csv", path=str(path), target="label"), store)
    params = CleanParams(type="clean", missing="median", drop_duplicates=keys)
    cleaned = clean.fn(table, params, 0, store)
    assert read_parts(cleaned)["all"][0].rows() == [(1, 10, "x"), (3, 20, "x"), (5, 30, "y")]
    assert cleaned.count == 3
    floats = tmp_path / "floats.csv"  # float columns keep their type: only filled rows rehashed
    floats.write_text(
        path.read_text().replace("10,", "10.5,").replace("20,", "20.5,").replace("30,", "30.5,")
    )
    table = ingest.fn(FileSource(type="csv", path=str(floats), target="label"), store)
    cleaned = clean.fn(table, params, 0, store)
    assert read_parts(cleaned)["all"][0].rows() == [(1, 10.5, "x"), (3, 20.5, "x"), (5, 30.5, "y")]
