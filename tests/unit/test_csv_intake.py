"""CSV files as public data sets write them: missing-value tokens (`NA`, `?`), other encodings,
`;` and tab delimiters, ragged lines, mixed columns; leaving columns out with `drop`; the data
profile's flags of id-like, constant and almost-numeric columns."""

import json
import logging

import polars as pl
import pytest

from trainflow.errors import DataError, SpecError
from trainflow.readers import check_file, read_labels
from trainflow.spec.pipeline import validate_spec
from trainflow.spec.sources import NULL_VALUES
from trainflow.spec.steps import CleanParams
from trainflow.steps import read_parts
from trainflow.tables import read_table
from trainflow.tasks.clean import clean
from trainflow.tasks.expect import ExpectSpec, check_expectations
from trainflow.tasks.ingest import FileSource, ingest


def write(tmp_path, lines: list[str], name: str = "data.csv", sep: str = ",") -> str:
    path = tmp_path / name
    path.write_text("\n".join(sep.join(line.split(",")) for line in lines) + "\n")
    return str(path)


def numbers(n: int, gap=lambda i, c: None) -> list[str]:
    """A header and n rows of four numeric columns and a label; `gap(i, column)` returns a
    token to write in place of a value (None: the number)."""
    rows = ["glucose,insulin,bmi,age,y"]
    for i in range(n):
        values = [f"{(i * 7) % 13 + 0.5}", f"{(i * 3) % 17}", f"{20 + i % 9}.25", f"{21 + i % 40}"]
        cells = [gap(i, c) or v for c, v in enumerate(values)]
        rows.append(",".join([*cells, "ab"[i % 2]]))
    return rows


def table(ref) -> pl.DataFrame:
    return read_table(ref.path / "all.parquet")[0]


def test_na_tokens_are_missing_numbers_which_clean_fills(tmp_path):
    """The issue's file: `NA` (and `?`, `N/A`) in numeric columns. They are read as numbers
    with gaps, not text that would be one-hot encoded; `clean` fills them with medians."""
    tokens = ["NA", "?", "N/A", "NA"]
    path = write(tmp_path, numbers(60, lambda i, c: tokens[c] if i % 6 == c else None))
    store = str(tmp_path / "store")
    ref = ingest.fn(FileSource(type="csv", path=path, target="y"), store)
    df = table(ref)
    assert all(df[c].dtype.is_numeric() for c in ["glucose", "insulin", "bmi", "age"])
    assert df.select(pl.all().null_count()).row(0) == (10, 10, 10, 10, 0)

    filled = clean.fn(ref, CleanParams(type="clean", missing="median"), 0, store)
    ((out, _),) = read_parts(filled).values()
    assert out.null_count().sum_horizontal().item() == 0 and len(out) == 60
    assert out["glucose"].dtype.is_numeric()


def test_null_values_replace_the_default_tokens(tmp_path):
    """A region code `NA` (North America) is a value when the user's list names only `-`."""
    lines = ["x,region,y"] + [
        f"{'-' if i % 5 == 0 else i},{['NA', 'EU', 'AS'][i % 3]},{'ab'[i % 2]}" for i in range(30)
    ]
    path = write(tmp_path, lines)
    store = str(tmp_path / "store")
    default = table(ingest.fn(FileSource(type="csv", path=path, target="y", drop=["x"]), store))
    assert default["region"].null_count() == 10  # `NA` is missing by default

    source = FileSource(type="csv", path=path, target="y", null_values=["-"])
    df = table(ingest.fn(source, store))
    assert df["region"].null_count() == 0 and "NA" in df["region"].to_list()
    assert df["x"].dtype.is_numeric() and df["x"].null_count() == 6


def test_a_token_among_numbers_is_named_with_its_count_and_the_null_values_fix(tmp_path):
    path = write(tmp_path, numbers(60, lambda i, c: "-" if c == 1 and i % 10 == 3 else None))
    with pytest.raises(DataError) as caught:
        check_file(FileSource(type="csv", path=path, target="y"))
    message = str(caught.value)
    assert "column 'insulin'" in message and "line 5 holds '-'" in message
    assert "'-' (6 rows) marks a missing value" in message
    fix = json.dumps([*NULL_VALUES, "-"])
    assert f"data.source.null_values: {fix}" in message

    source = FileSource(type="csv", path=path, target="y", null_values=json.loads(fix))
    df = table(ingest.fn(source, str(tmp_path / "store")))
    assert df["insulin"].dtype.is_numeric() and df["insulin"].null_count() == 6


def test_a_column_text_only_because_of_a_token_is_flagged_in_the_profile(tmp_path, caplog):
    """Mostly `missing` with numbers between: no error (it could be text), but the profile
    and the log name the column, the token, its count and the fix."""
    gap = lambda i, c: "missing" if c == 2 and i % 3 else None  # noqa: E731
    path = write(tmp_path, numbers(30, gap))
    store = str(tmp_path / "store")
    ref = ingest.fn(FileSource(type="csv", path=path, target="y"), store)
    with caplog.at_level(logging.WARNING, logger="trainflow"):
        report = check_expectations.fn(ref, ExpectSpec(), store)
    notes = {r["column"]: r.get("note") for r in report.meta["profile"]}
    assert "text only because of 'missing' (20 rows)" in notes["bmi"]
    assert '"missing"]' in notes["bmi"] and "data.source.null_values" in notes["bmi"]
    assert notes["glucose"] is None
    assert any("'bmi'" in r.message and "'missing'" in r.message for r in caplog.records)


def test_a_latin1_file_names_its_line_and_reads_with_encoding(tmp_path):
    lines = numbers(12)
    lines[8] = "1.5,2,20.25,30,caf\xe9"  # line 9
    path = tmp_path / "latin1.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError) as caught:
        check_file(FileSource(type="csv", path=str(path), target="y"))
    message = str(caught.value)
    assert "line 9, column 'y'" in message and "is not UTF-8" in message
    assert "data.source.encoding: latin-1" in message

    source = FileSource(type="csv", path=str(path), target="y", encoding="latin-1")
    assert "café" in read_labels(source).to_list()


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_and_bar_delimiters_are_sniffed(tmp_path, sep):
    path = write(tmp_path, numbers(40), sep=sep)
    df = table(ingest.fn(FileSource(type="csv", path=path, target="y"), str(tmp_path / "s")))
    assert df.columns == ["glucose", "insulin", "bmi", "age", "y"]
    assert df["bmi"].dtype.is_numeric() and df["bmi"][0] == 20.25


def test_a_declared_delimiter_is_used_as_given(tmp_path):
    """A comma inside one-column values would fool no sniffer here, but a user may say it."""
    path = write(tmp_path, ["a;y"] + [f"{i},5;{'ab'[i % 2]}" for i in range(20)])
    source = FileSource(type="csv", path=path, target="y", delimiter=";")
    df = table(ingest.fn(source, str(tmp_path / "s")))
    assert df.columns == ["a", "y"] and df["a"][1] == "1,5"


def test_a_ragged_line_is_named_by_its_number_with_the_sniffed_delimiter(tmp_path):
    lines = numbers(30)
    lines[17] = "1.5,2,20.25,30,a,extra"  # line 18
    path = write(tmp_path, lines, sep=";")
    with pytest.raises(DataError) as caught:
        check_file(FileSource(type="csv", path=path, target="y"))
    message = str(caught.value)
    assert "line 18 of" in message and "has 6 fields, the header (line 1) has 5" in message
    assert "delimiter ';' was sniffed" in message and "data.source.delimiter" in message


def test_a_mixed_column_names_the_row_the_value_and_columns(tmp_path):
    lines = numbers(30)
    lines[11] = "1.5,lots,20.25,30,a"  # line 12
    path = write(tmp_path, lines)
    with pytest.raises(DataError) as caught:
        check_file(FileSource(type="csv", path=path, target="y"))
    message = str(caught.value)
    assert "column 'insulin'" in message and "line 12 holds 'lots'" in message
    assert "data.source.columns: {glucose: float64, insulin: str" in message


def test_drop_leaves_columns_out_and_refuses_a_name_that_is_not_a_column(tmp_path):
    lines = ["state,area_code,calls,minutes,churn"] + [
        f"{['KS', 'OH', 'NJ'][i % 3]},{400 + i % 4},{i % 7},{i * 1.5},{'ny'[i % 2]}"
        for i in range(30)
    ]
    path = write(tmp_path, lines)
    source = FileSource(type="csv", path=path, target="churn", drop=["state", "area_code"])
    ingested = read_table(ingest.fn(source, str(tmp_path / "s")).path / "all.parquet")
    assert ingested[1].features == ["calls", "minutes"]

    with pytest.raises(DataError) as caught:
        check_file(source.model_copy(update={"drop": ["state", "area_cod"]}))
    message = str(caught.value)
    assert "data.source.drop: 'area_cod' is not a column" in message
    assert "did you mean `area_code`" in message and "'minutes'" in message


def test_drop_applies_to_parquet_files_too(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame(
        {"id": range(30), "x": [i % 4 for i in range(30)], "y": ["ab"[i % 2] for i in range(30)]}
    ).write_parquet(path)
    source = FileSource(type="parquet", path=str(path), target="y", drop=["id"])
    assert read_table(ingest.fn(source, str(tmp_path / "s")).path / "all.parquet")[1].features == [
        "x"
    ]


@pytest.mark.parametrize(
    "extra,refusal",
    [
        ({"drop": ["churn"]}, "'churn' is the target"),
        ({"drop": ["state"], "features": ["calls"]}, "not both"),
        ({"drop": ["group"], "keep_columns": ["group"]}, "'group' is in keep_columns"),
        ({"type": "parquet", "null_values": ["-"]}, "apply to csv files only"),
    ],
)
def test_drop_of_a_column_with_a_role_and_csv_options_elsewhere_are_spec_errors(
    tmp_path, extra, refusal
):
    spec = {
        "name": "drop",
        "data": {
            "source": {"type": "csv", "path": "x.csv", "target": "churn", **extra},
            "steps": [{"type": "split"}],
        },
        "model": {"type": "mlp"},
    }
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert "data.source" in str(caught.value) and refusal in str(caught.value)


def test_id_like_and_constant_columns_are_flagged_with_drop(tmp_path):
    lines = ["customer,country,score,y"] + [
        f"C{1000 + i},FR,{i % 5},{'ab'[i % 2]}" for i in range(40)
    ]
    store = str(tmp_path / "store")
    ref = ingest.fn(FileSource(type="csv", path=write(tmp_path, lines), target="y"), store)
    profile = check_expectations.fn(ref, ExpectSpec(), store).meta["profile"]
    notes = {r["column"]: r.get("note") for r in profile}
    assert notes["customer"].startswith("id-like: each of its 40 values is distinct")
    assert "data.source.drop: [customer]" in notes["customer"]
    assert notes["country"].startswith("constant: every row holds the one value 'FR'")
    assert "data.source.drop: [country]" in notes["country"]
    assert notes["score"] is None and notes["y"] is None
    from trainflow.reporting.markdown import profile_lines

    shown = "\n".join(profile_lines(profile))  # and the report says so under its profile
    assert "- **customer**: id-like" in shown and "- **country**: constant" in shown


def test_null_values_that_null_every_label_are_refused(tmp_path):
    path = write(tmp_path, ["x,y"] + [f"{i},{'NA' if i % 2 else 'None'}" for i in range(10)])
    with pytest.raises(DataError) as caught:
        read_labels(FileSource(type="csv", path=path, target="y"))
    message = str(caught.value)
    assert "every label of the target 'y'" in message
    assert "holds only 'NA' (5 rows), 'None' (5 rows)" in message
    assert 'data.source.null_values: ["", "N/A", "NaN", "null", "?"]' in message


def test_a_class_named_like_a_token_is_a_warning_naming_it(tmp_path, caplog):
    """Severity `None` is a class here: its rows would be unlabelled, which the log says."""
    labels = ["None", "mild", "severe"]
    path = write(tmp_path, ["x,y"] + [f"{i},{labels[i % 3]}" for i in range(30)])
    with caplog.at_level(logging.WARNING, logger="trainflow"):
        assert read_labels(FileSource(type="csv", path=path, target="y")).null_count() == 10
    (record,) = [r for r in caplog.records if "null_values" in r.getMessage()]
    assert "labels 'None' (10 rows) of the target 'y'" in record.getMessage()
