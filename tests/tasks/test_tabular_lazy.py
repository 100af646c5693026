"""Tabular steps as streamed polars queries: declared schema, lazy = eager results, views,
decoding."""

import json
import shutil

import numpy as np
import polars as pl
import pytest

from trainflow.artifacts import ArtifactRef
from trainflow.errors import ArtifactError, DataError
from trainflow.preflight import check_file
from trainflow.steps import fit_apply, materialize, read_parts
from trainflow.tables import class_counts, read_table
from trainflow.tasks import clean, encode, normalize
from trainflow.tasks.ingest import FileSource, ingest
from trainflow.tasks.split import SplitParams, split, split_rows
from trainflow.transforms.encode import decode


@pytest.fixture
def mixed_csv(tmp_path):
    """Numbers with gaps, a categorical column and a label, as a user's CSV looks."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(size=n).round(3).astype(str).astype(object)
    a[::17] = None
    frame = pl.DataFrame(
        {
            "id": np.arange(n),
            "a": a.tolist(),
            "b": rng.integers(0, 9, n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "label": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
        }
    )
    path = tmp_path / "mixed.csv"
    frame.write_csv(path)
    return path


def test_declared_schema_selects_and_converts_columns(store, mixed_csv):
    source = FileSource(
        type="csv",
        path=str(mixed_csv),
        target="label",
        columns={"a": "float32", "b": "int16", "colour": "category", "label": "str"},
    )
    df, schema = read_table(ingest.fn(source, store).path / "all.parquet")
    assert df.columns == ["a", "b", "colour", "label"]  # `id` was not declared: not read
    assert (df["a"].dtype, df["b"].dtype, df["colour"].dtype) == (pl.Float32, pl.Int16, pl.Utf8)
    assert df["a"].null_count() == len(range(0, 400, 17))  # empty cells are missing values
    assert schema.features == ["a", "b", "colour"] and schema.classes == ["no", "yes"]


def test_values_that_do_not_convert_are_listed_before_any_work(tmp_path, store):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1.5,2,x\nabc,3,y\n2.5,oops,x\n4,4.5,y\n")
    source = FileSource(
        type="csv",
        path=str(path),
        target="label",
        columns={"a": "float64", "b": "int64", "label": "str"},
    )
    with pytest.raises(DataError) as err:
        check_file(source)
    message = str(err.value)
    assert "'a' to float64: 1 value(s) such as ['abc']" in message
    assert "'b' to int64: 2 value(s) such as ['oops', '4.5']" in message
    with pytest.raises(DataError, match="'gone'"):
        check_file(source.model_copy(update={"columns": {"gone": "float64", "label": "str"}}))


def _prepared(store, mixed_csv):
    source = FileSource(
        type="csv",
        path=str(mixed_csv),
        target="label",
        keep_columns=["id"],
        features=["a", "b", "colour"],
    )
    table = ingest.fn(source, store)
    table = clean.clean.fn(table, clean.CleanParams(type="clean", missing="median"), 0, store)
    return split.fn(table, SplitParams(type="split"), 0, store)


@pytest.mark.parametrize(
    "module,params",
    [
        (clean, clean.CleanParams(type="clean", missing="mode")),
        (encode, encode.EncodeParams(type="encode", method="one_hot")),
        (encode, encode.EncodeParams(type="encode", method="ordinal")),
        (normalize, normalize.NormalizeParams(type="normalize", method="robust")),
        (normalize, normalize.NormalizeParams(type="normalize", method="quantile")),
    ],
)
def test_streamed_step_equals_the_in_memory_step(store, mixed_csv, module, params):
    splits = _prepared(store, mixed_csv)
    parts = read_parts(splits)
    if module is normalize:  # numbers only
        parts = {
            k: encode.apply(
                df,
                s,
                encode.EncodeParams(type="encode"),
                encode.fit(parts["train"][0], s, encode.EncodeParams(type="encode")),
            )
            for k, (df, s) in parts.items()
        }
    eager, eager_state = fit_apply(parts, params, module.fit, module.apply, 0)
    lazy, lazy_state = fit_apply(
        {k: (df.lazy(), s) for k, (df, s) in parts.items()},
        params,
        module.fit,
        module.apply,
        0,
        lazy=True,
    )
    assert isinstance(lazy["train"][0], pl.LazyFrame)
    assert lazy_state == eager_state
    for name in ("train", "val", "test"):
        assert lazy[name][0].collect().equals(eager[name][0])


def test_split_task_streams_the_same_rows_as_the_in_memory_split(store, mixed_csv):
    splits = _prepared(store, mixed_csv)
    parts = read_parts(splits)
    whole, schema = read_parts(
        clean.clean.fn(
            ingest.fn(
                FileSource(
                    type="csv",
                    path=str(mixed_csv),
                    target="label",
                    keep_columns=["id"],
                    features=["a", "b", "colour"],
                ),
                store,
            ),
            clean.CleanParams(type="clean", missing="median"),
            0,
            store,
        )
    )["all"]
    expected = {
        name: whole[rows]
        for name, rows in split_rows(whole, schema, SplitParams(type="split"), 0).items()
    }
    for name in ("train", "val", "test"):
        assert parts[name][0].equals(expected[name])
    for name in ("train", "val", "test"):  # counted from the labels in memory
        assert splits.meta["parts"][name] == {
            "rows": len(expected[name]),
            "synthetic": 0,
            "classes": class_counts(expected[name], schema),
        }


@pytest.mark.parametrize("method", ["one_hot", "ordinal"])
def test_decode_inverts_encode_for_reports(store, mixed_csv, method):
    parts = read_parts(_prepared(store, mixed_csv))
    train, schema = parts["train"]
    params = encode.EncodeParams(type="encode", method=method)
    state = encode.fit(train, schema, params)
    encoded, _ = encode.apply(parts["test"][0], schema, params, state)
    assert "colour" not in encoded.columns or method == "ordinal"
    assert decode(encoded, state).equals(parts["test"][0])


def test_encode_and_normalize_store_views_that_read_as_the_applied_steps(store, mixed_csv):
    """encode and normalize write their fitted state only; reading the view gives exactly the
    rows the eager steps give, and `materialize` writes those rows once as Parquet."""
    splits = _prepared(store, mixed_csv)
    enc_params = encode.EncodeParams(type="encode")
    norm_params = normalize.NormalizeParams(type="normalize", method="standard")
    encoded = encode.encode.fn(splits, enc_params, 0, store)
    scaled = normalize.normalize.fn(encoded, norm_params, 0, store)
    assert sorted(p.name for p in scaled.path.iterdir()) == ["ref.json", "state.json", "view.json"]
    assert scaled.base() == ArtifactRef(
        uri=str(encoded.path), fingerprint=encoded.fingerprint, kind="splits"
    )
    assert scaled.meta["parts"] == splits.meta["parts"] and scaled.count == splits.count

    parts = read_parts(splits)
    eager, _ = fit_apply(parts, enc_params, encode.fit, encode.apply, 0)
    eager, _ = fit_apply(eager, norm_params, normalize.fit, normalize.apply, 0)
    viewed = read_parts(scaled)
    stored = materialize(scaled, store)
    assert sorted(p.name for p in stored.path.iterdir()) == [
        "ref.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    for name in ("train", "val", "test"):
        assert viewed[name][0].equals(eager[name][0])
        assert read_table(stored.path / f"{name}.parquet")[0].equals(eager[name][0])
        assert viewed[name][1] == eager[name][1]  # the schema names the one-hot columns
    assert materialize(stored, store) == stored


@pytest.mark.parametrize(
    "params",
    [
        clean.CleanParams(type="clean", missing="median"),
        clean.CleanParams(type="clean", missing="forward_fill", drop_duplicates=["id"]),
        clean.CleanParams(type="clean", missing="drop", drop_duplicates=False),
    ],
)
def test_clean_stores_a_view_that_reads_as_the_applied_step(store, mixed_csv, params):
    """clean on a table writes its fill values and which rows stay (one byte a row, when it
    drops duplicates), not the rows: the view reads as the in-memory step does, counts its
    rows and classes, and `split` and later steps read through it."""
    rows = pl.read_csv(mixed_csv, infer_schema_length=0)
    path = mixed_csv.with_name("repeated.csv")  # 20 repeated rows and one without a label
    pl.concat([rows, rows.head(20), rows.tail(1).with_columns(label=None)]).write_csv(path)
    table = ingest.fn(
        FileSource(
            type="csv",
            path=str(path),
            target="label",
            keep_columns=["id"],
            features=["a", "b", "colour"],
        ),
        store,
    )
    cleaned = clean.clean.fn(table, params, 0, store)
    files = sorted(p.name for p in cleaned.path.iterdir())
    assert files == (["keep.npy"] if params.drop_duplicates else []) + [
        "ref.json",
        "state.json",
        "view.json",
    ]
    eager, _ = fit_apply(read_parts(table), params, clean.fit, clean.apply, 0)
    viewed, schema = read_parts(cleaned)["all"]
    assert viewed.equals(eager["all"][0]) and len(viewed) < table.count
    assert cleaned.count == len(viewed)
    assert cleaned.meta["parts"]["all"]["classes"] == class_counts(viewed, schema)
    splits = split.fn(cleaned, SplitParams(type="split"), 0, store)
    assert sum(len(df) for df, _ in read_parts(splits).values()) == len(viewed)


def test_a_view_is_valid_only_while_its_base_is(store, mixed_csv):
    splits = _prepared(store, mixed_csv)
    scaled = normalize.normalize.fn(
        encode.encode.fn(splits, encode.EncodeParams(type="encode"), 0, store),
        normalize.NormalizeParams(type="normalize"),
        0,
        store,
    )
    assert scaled.is_valid()
    (splits.path / "val.parquet").write_bytes(b"tampered")  # two views down
    with pytest.raises(ArtifactError, match="was altered"):
        scaled.verify()
    shutil.rmtree(splits.path)
    with pytest.raises(ArtifactError, match="view over splits artifact .* which is missing"):
        read_parts(scaled)

    view = scaled.path / "view.json"  # a base outside the store is never followed
    view.write_text(
        json.dumps(
            {**json.loads(view.read_text()), "base": {"kind": "splits", "fingerprint": "../../etc"}}
        )
    )
    with pytest.raises(ArtifactError, match="not a readable view .*'../../etc' is not a sha256"):
        scaled.base()


def _quoted_rows(n: int) -> list[str]:
    """Rows with quoted values that hold commas, doubled quotes and newlines, CRLF endings
    and a blank line: the CSV a spreadsheet writes."""
    out = []
    for i in range(n):
        note = f'"note {i}, with ""quotes""\nand a second line"' if i % 3 == 0 else f"n{i}"
        out.append(f"{i * 0.5},{note},{'yes' if i % 4 else 'no'}\r\n")
        if i == 10:
            out.append("\r\n")
    return out


def test_the_line_scan_reads_records_as_polars_does_across_its_blocks(tmp_path):
    """The scan of a file spanning several blocks counts the rows polars reads, and names the
    exact line of a ragged record found after the first block."""
    from trainflow.csvscan import BLOCK, scan_csv

    body = _quoted_rows(300_000)
    path = tmp_path / "quoted.csv"
    path.write_text("x,note,label\r\n" + "".join(body), newline="")
    assert path.stat().st_size > 2 * BLOCK
    layout = scan_csv(path, 1 << 20)
    assert layout.columns == ["x", "note", "label"] and not layout.lines_are_rows
    assert layout.rows == pl.read_csv(path).height == len(body)

    ragged = tmp_path / "ragged.csv"
    text = "x,note,label\r\n" + "".join(body[:250_000]) + "1.5,n,yes,extra\r\n"
    ragged.write_text(text + "".join(body[250_000:]), newline="")
    with pytest.raises(DataError, match=f"line {text.count(chr(10))} of .* has 4 fields"):
        scan_csv(ragged, 1 << 20)


def test_an_unclosed_quote_is_named_at_its_line_not_read_to_the_end(tmp_path):
    from trainflow.csvscan import scan_csv

    path = tmp_path / "unclosed.csv"
    path.write_text('x,note,label\n1,ok,yes\n2,"never closed,no\n' + "3,n,yes\n" * 300_000)
    with pytest.raises(DataError, match="line 3 of .* longer than 1 MiB: a quoted field"):
        scan_csv(path, 1 << 20)
    path.write_text('x,note,label\n1,ok,yes\n2,"never closed,no\n3,n,yes\n')
    with pytest.raises(DataError, match="line 3 of .* never closed"):
        scan_csv(path, 1 << 20)


def test_a_declared_encoding_is_read_through_a_utf8_copy(tmp_path, store):
    path = tmp_path / "cp1252.csv"
    rows = [f"{i},{'Zürich' if i % 2 else 'Genève'}" for i in range(40)]
    path.write_bytes(("a,city\n" + "\n".join(rows) + "\n").encode("cp1252"))
    source = FileSource(type="csv", path=str(path), target="city")
    with pytest.raises(DataError, match="line 2, column 'city' of .* is not UTF-8"):
        ingest.fn(source, store)
    table = ingest.fn(source.model_copy(update={"encoding": "cp1252"}), store)
    df, schema = read_table(table.path / "all.parquet")
    assert schema.classes == ["Genève", "Zürich"] and df["a"].to_list() == list(range(40))


def test_declared_values_that_do_not_convert_name_the_first_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,label\n1.5,x\n2,y\nabc,x\n")
    source = FileSource(
        type="csv", path=str(path), target="label", columns={"a": "float64", "label": "str"}
    )
    with pytest.raises(DataError, match=r"\['abc'\] \(the first on line 4\)"):
        check_file(source)


def test_a_label_past_the_inferred_rows_names_its_line(tmp_path):
    """Labels read as numbers from the first rows, then a word: named before any task (the
    target is checked like the features)."""
    path = tmp_path / "labels.csv"
    path.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(10_100)) + "5,unknown\n")
    with pytest.raises(
        DataError,
        match="column 'label' .* first 10000 rows, which set its "
        "type, but line 10102 holds 'unknown'",
    ):
        check_file(FileSource(type="csv", path=str(path), target="label"))
