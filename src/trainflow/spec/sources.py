"""Data sources (`data.source`), one params model per `type`; readers in trainflow/readers.py.

A source names the files it reads in `content_paths()`, so that the cache key of ingest
covers their bytes (trainflow.caching hashes them) and an edited file is never served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section

DType = Literal[
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
    "str",
    "category",
    "date",
    "datetime",
]
# Encodings whose newline, comma and quote are the ASCII bytes (the line scan reads bytes).
Encoding = Literal["utf-8", "latin-1", "cp1252", "iso-8859-15"]
# The delimiters a CSV file may use (sniffed from its first lines when not declared).
Delimiter = Literal[",", ";", "\t", "|"]
# Cells read as missing values by default: what R, pandas, spreadsheets and UCI files write.
NULL_VALUES = ("", "NA", "N/A", "NaN", "null", "None", "?")
CSV_ONLY = ("encoding", "max_line_bytes", "null_values", "delimiter")


class SklearnSource(Section):
    type: Literal["sklearn"]
    # diabetes: a regression target (disease progression, a number), the others class labels
    dataset: Literal["digits", "breast_cancer", "wine", "iris", "diabetes"]


class FileSource(Section):
    """A CSV or Parquet file, read lazily and written with the streaming engine.

    `columns` declares the schema: only these columns are read, each converted to its type
    (a value that does not convert is an error listing the column and examples); without it,
    types are inferred. `category` columns are text that an `encode` step turns into numbers.
    """

    type: Literal["csv", "parquet"]
    path: str
    target: str
    columns: dict[str, DType] | None = Field(
        None, description="Declared schema: column -> type; only these columns are read"
    )
    features: list[str] | None = Field(None, description="Feature columns; default all but target")
    drop: list[str] = Field(
        default_factory=list,
        description="Columns left out of the features (ids, constants); the features are "
        "then every other column; give `features` or `drop`, not both",
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description="Columns carried along but not used as features "
        "(group ids or timestamps for `split`)",
    )
    weight_column: str | None = Field(
        None,
        description="A column of per-row loss weights (numbers >= 0), carried through to "
        "the training loss; not a feature",
    )
    aux_targets: list[str] = Field(
        default_factory=list,
        description="Further target columns, each learned by its own "
        "head over the shared model (multi-task learning); not features",
    )
    encoding: Encoding = Field(
        "utf-8",
        description="The CSV file's text encoding (others "
        "than UTF-8 are read through a UTF-8 copy)",
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(NULL_VALUES),
        description="CSV cells read as missing values (exact matches); a list given here "
        "replaces the default list NA, N/A, NaN, null, None, ? (an empty cell is always "
        "missing)",
    )
    delimiter: Delimiter | None = Field(
        None,
        description="The CSV field delimiter; default: sniffed from the first lines "
        "among comma, semicolon, tab and |",
    )
    max_line_bytes: int = Field(
        8 * 2**20,
        ge=1024,
        le=2**30,
        description="The longest line a CSV file may have: a "
        "longer one (no newlines, an unclosed quote) is refused before the file is read",
    )

    @model_validator(mode="after")
    def _csv_only(self):
        if self.type != "csv" and set(CSV_ONLY) & self.model_fields_set:
            raise ValueError(f"{', '.join(CSV_ONLY)} apply to csv files only")
        return self

    @model_validator(mode="after")
    def _dropped(self):
        """`drop` leaves columns out of the default features: beside a `features` list it
        would say the same twice, and a column it names cannot also have a role."""
        if self.drop and self.features is not None:
            raise ValueError(
                "give `features` (the columns to use) or `drop` (the columns to leave "
                "out), not both"
            )
        roles = {self.target: "the target", self.weight_column: "the weight_column"}
        roles |= dict.fromkeys(self.keep_columns, "in keep_columns")
        roles |= dict.fromkeys(self.aux_targets, "in aux_targets")
        clash = [f"{c!r} is {roles[c]}" for c in self.drop if c in roles]
        if clash:
            raise ValueError(f"drop names columns that have a role: {'; '.join(clash)}")
        return self

    def content_paths(self) -> list[Path]:
        """The file ingest reads (its bytes enter the cache key)."""
        return [Path(self.path)]


class ImageFolderSource(Section):
    type: Literal["image_folder"]
    path: str
    channels: Literal[1, 3] = 1

    def content_paths(self) -> list[Path]:
        return [Path(self.path)]


class SequenceSource(Section):
    """A generated sequence-classification dataset (nothing to download): each sample is
    `length` steps of `channels` signals; the class is the frequency of a sine wave with a
    random phase and amplitude in channel 0, under Gaussian noise, while the other channels
    are noise around a random walk. Reproducible from `seed`."""

    type: Literal["sequences"]
    samples: int = Field(2000, ge=20, le=1_000_000)
    length: int = Field(48, ge=4, le=4096)
    channels: int = Field(2, ge=1, le=64)
    classes: int = Field(3, ge=2, le=16)
    noise: float = Field(0.5, ge=0)
    seed: int = 0
    aux: bool = Field(
        False,
        description="add an auxiliary target `amplitude` (low/high: "
        "the sine's amplitude below or above 1), for multi-task learning",
    )
