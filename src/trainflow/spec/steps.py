"""Data-step params (`data.steps`), one model per step `type`; the steps live in tasks/.

Only pydantic here: a spec validates without loading polars, scikit-learn or
imbalanced-learn (the `resample` options are checked against the sampler's signature, which
imports imbalanced-learn only when options are given).
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from trainflow.spec.base import Section

# `resample.method` -> its imbalanced-learn class ("module:Class", imported when it runs) and
# the options it takes besides sampling_strategy and random_state (written out so that a spec
# validates without importing imbalanced-learn; a contract test compares them with the
# classes' signatures).
SAMPLERS = {
    "smote": ("imblearn.over_sampling:SMOTE", ("k_neighbors",)),
    "smotenc": (
        "imblearn.over_sampling:SMOTENC",
        ("categorical_features", "categorical_encoder", "k_neighbors"),
    ),
    "borderline_smote": (
        "imblearn.over_sampling:BorderlineSMOTE",
        ("k_neighbors", "m_neighbors", "kind"),
    ),
    "adasyn": ("imblearn.over_sampling:ADASYN", ("n_neighbors",)),
    "random_over": ("imblearn.over_sampling:RandomOverSampler", ("shrinkage",)),
    "random_under": ("imblearn.under_sampling:RandomUnderSampler", ("replacement",)),
    "near_miss": (
        "imblearn.under_sampling:NearMiss",
        ("version", "n_neighbors", "n_neighbors_ver3", "n_jobs"),
    ),
    "tomek_links": ("imblearn.under_sampling:TomekLinks", ("n_jobs",)),
    "edited_nearest_neighbours": (
        "imblearn.under_sampling:EditedNearestNeighbours",
        ("n_neighbors", "kind_sel", "n_jobs"),
    ),
    "smote_tomek": ("imblearn.combine:SMOTETomek", ("smote", "tomek", "n_jobs")),
    "smote_enn": ("imblearn.combine:SMOTEENN", ("smote", "enn", "n_jobs")),
}
RESERVED = ("sampling_strategy", "random_state")  # set by the step itself
# The names of the columns steps add, here so that code below the tasks (the export's
# folding of steps into a graph) can name them without importing a task.
ANOMALY_FLAG = "anomaly"


def one_hot_name(column: str, category: str) -> str:
    return f"{column}={category}"


Strategy = Literal["auto", "minority", "not minority", "not majority", "all", "majority"]
Scalar = bool | int | float | str | list[int] | list[str] | None


def sampler_class(method: str) -> Any:
    """The imbalanced-learn class of a `resample.method`."""
    module, _, name = SAMPLERS[method][0].partition(":")
    return getattr(importlib.import_module(module), name)


class CleanParams(Section):
    """Before `split` it is fitted on the whole table; after `split`, on the training part.

    mean/median/constant fill numeric columns; text columns are filled with their mode.
    """

    type: Literal["clean"]
    drop_duplicates: bool | list[str] = Field(
        True, description="true: identical rows; a list: rows sharing these key columns"
    )
    missing: Literal[
        "drop", "mean", "median", "mode", "constant", "forward_fill", "backward_fill", "keep"
    ] = "drop"
    fill_value: float | None = None
    drop_missing_label: bool = True

    @model_validator(mode="after")
    def _fill_value_for_constant(self):
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("missing: constant needs a fill_value")
        return self


class SplitParams(Section):
    """Steps before `split` run once on the whole table; steps after it are fitted on train.

    stratified: class proportions kept in every part; random: shuffled by the seed; group: all
    rows of a `group_column` value land in one part (shares are of groups); time: ordered by
    `time_column`, the latest rows are test and the ones before them validation; column: the
    data says each row's part (a benchmark's own train/test split): `column` holds it, the
    rows whose value is in `train` train and those in `test` test; `validation` is a share
    carved from the training rows (stratified), or the values of its own rows. The column
    is not a feature: list it in data.source.keep_columns.

    validation: 0 leaves no validation part (then nothing can early-stop or pick a best
    epoch: the last epoch is the model, as with train.fit_on: train+validation).
    """

    type: Literal["split"]
    strategy: Literal["stratified", "random", "group", "time", "column"] = "stratified"
    validation: Annotated[float, Field(ge=0, lt=1)] | list[str] = Field(
        0.15,
        description="the validation share (of the table; with strategy column, of the "
        "training rows), or with strategy column the column's values of validation rows",
    )
    test: Annotated[float, Field(gt=0, lt=1)] | list[str] = Field(
        0.2, description="the test share, or with strategy column the values of test rows"
    )
    group_column: str | None = None
    time_column: str | None = None
    column: str | None = Field(None, description="strategy column: the column naming the part")
    train: list[str] | None = Field(
        None, description="strategy column: the values of the training rows"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if (self.strategy == "group") != (self.group_column is not None):
            raise ValueError("group_column is required by strategy: group, and only by it")
        if (self.strategy == "time") != (self.time_column is not None):
            raise ValueError("time_column is required by strategy: time, and only by it")
        if self.strategy == "column":
            return self._given_parts()
        if self.train is not None or self.column is not None:
            raise ValueError(
                "column and train name the rows of each part for strategy: column only: "
                "set strategy: column, or drop them"
            )
        if isinstance(self.validation, list) or isinstance(self.test, list):
            raise ValueError(
                "validation and test are shares (numbers from 0 to 1) unless strategy is "
                "column, where they may list the column's values of their rows"
            )
        if self.validation + self.test >= 0.9:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves "
                "less than 10% for training; lower them"
            )
        return self

    def _given_parts(self):
        if self.column is None or not self.train or not isinstance(self.test, list):
            raise ValueError(
                "strategy: column takes the part from the data: give column (its name), "
                "train (its values for training rows) and test (its values for test rows), "
                "e.g. {strategy: column, column: part, train: [train], test: [test]}"
            )
        given = {"train": self.train, "test": self.test}
        if isinstance(self.validation, list):
            given["validation"] = self.validation
        seen: dict[str, str] = {}
        for part, values in given.items():
            for value in values:
                if value in seen:
                    raise ValueError(
                        f"split value {value!r} is listed for both {seen[value]} and {part}: "
                        "each value names one part"
                    )
                seen[value] = part
        return self


class NormalizeParams(Section):
    """Tabular features are scaled per column; images per channel.

    standard: (x - mean) / std; minmax: to [0, 1]; robust: (x - median) / IQR; max_abs: x / max|x|;
    log1p: sign(x) * log(1 + |x|), learns nothing; quantile (tabular only): each column mapped
    through the training part's quantiles to a uniform or normal distribution.
    """

    type: Literal["normalize"]
    method: Literal["standard", "minmax", "robust", "max_abs", "log1p", "quantile"] = "standard"
    quantiles: int = Field(100, ge=2, le=10_000)
    output: Literal["uniform", "normal"] = "uniform"


class EncodeParams(Section):
    """Categories are learned from the training part (after split) or the whole table.

    one_hot: a 0/1 column `<column>=<category>` per category; a missing or unseen value is all
    zeros. ordinal: the category's index in sorted order; missing or unseen is -1.
    """

    type: Literal["encode"]
    method: Literal["one_hot", "ordinal"] = "one_hot"
    columns: list[str] | None = None
    unknown: Literal["ignore", "error"] = Field(
        "ignore", description="a category not seen when fitting: encode as unknown, or fail"
    )


class ResampleParams(Section):
    """One imbalanced-learn sampler by name; `options` are its other keyword arguments.

    Runs after `split`, on the training part only (inside each CV fold too); the sampler's
    `random_state` is the pipeline seed. Features must be numeric and complete by then
    (`clean` and `encode` first), except SMOTENC's `categorical_features`.
    """

    train_only: ClassVar[bool] = True
    requires_split: ClassVar[bool] = True

    type: Literal["resample"]
    method: Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
    sampling_strategy: Strategy | float | dict[str, int] = "auto"
    options: dict[str, Scalar] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_exist(self):
        accepted = set(SAMPLERS[self.method][1])
        unknown = sorted(set(self.options) - accepted - set(RESERVED))
        reserved = sorted(set(RESERVED) & set(self.options))
        if unknown:
            raise ValueError(
                f"{self.method} has no option(s) {unknown}; it takes {sorted(accepted)}"
            )
        if reserved:
            raise ValueError(
                f"options {reserved}: set sampling_strategy above; random_state "
                "is the pipeline seed"
            )
        return self


class OutliersParams(Section):
    """Bounds per numeric column: mean +- t*std (zscore, t=3) or [Q1 - t*IQR, Q3 + t*IQR] (iqr,
    t=1.5). `clip` moves values to the bounds in every part; `drop` removes rows with a value
    outside them: from the whole table before `split`, from the training part only after it."""

    type: Literal["outliers"]
    method: Literal["zscore", "iqr"] = "iqr"
    threshold: float | None = Field(None, gt=0)
    action: Literal["clip", "drop"] = "clip"
    columns: list[str] | None = None

    @property
    def train_only(self) -> bool:
        return self.action == "drop"


class AnomaliesParams(Section):
    """The detector is fitted where the step is (whole table before `split`, training part
    after). `drop` removes anomalous rows (training part only after `split`); `flag` adds a 0/1
    feature column `anomaly` to every part; `report` changes nothing. The count and a sample
    of the rows found go to the run report either way."""

    type: Literal["anomalies"]
    method: Literal["isolation_forest", "lof", "zscore", "iqr"] = "isolation_forest"
    action: Literal["drop", "flag", "report"] = "report"
    contamination: float | Literal["auto"] = "auto"
    threshold: float | None = Field(None, gt=0, description="zscore/iqr only")
    n_estimators: int = Field(100, ge=1, description="isolation_forest only")
    n_neighbors: int = Field(20, ge=1, description="lof only")

    @property
    def train_only(self) -> bool:
        return self.action == "drop"

    def prediction_refusal(self) -> str | None:
        """Why rows cannot pass this step at prediction, or None: a `flag` from a fitted
        scikit-learn detector needs the detector, which trainflow never stores (a fitted
        estimator is stored by pickling it, and a model package loads without pickle)."""
        if self.action != "flag" or self.method not in ("isolation_forest", "lof"):
            return None
        return (
            f"the anomalies step (method {self.method}, action flag) feeds the model a "
            f"flag computed by a fitted scikit-learn {self.method} detector, which a model "
            "package does not hold (it would need pickle): use method zscore or iqr (their "
            "bounds are stored), or action report or drop (rows then pass unchanged)"
        )


class SubsampleParams(Section):
    """Before `split`: a fraction of the whole table; after it: of the training part only.
    Class proportions are kept (`stratify`), and the pipeline seed picks the rows."""

    train_only: ClassVar[bool] = True

    type: Literal["subsample"]
    fraction: float = Field(..., gt=0, lt=1)
    stratify: bool = True


class SmoothParams(Section):
    """Smooths each listed column along the row order (or `order_by`), within `group_by`
    series if given. Learns nothing: every part is smoothed on its own rows, so no value
    crosses from one part to another."""

    type: Literal["smooth"]
    columns: list[str] = Field(..., min_length=1)
    method: Literal["rolling_mean", "exponential", "gaussian"] = "rolling_mean"
    window: int = Field(3, ge=1, description="rolling_mean and gaussian window, in rows")
    alpha: float = Field(0.3, gt=0, le=1, description="exponential: weight of the newest row")
    order_by: str | None = None
    group_by: str | None = None

    @model_validator(mode="after")
    def _odd_gaussian_window(self):
        if self.method == "gaussian" and self.window % 2 == 0:
            raise ValueError(f"a gaussian window must be odd (got {self.window})")
        return self


class SynthesizeParams(Section):
    """Generates rows for every class below `target` rows (default: the largest class's count)
    in the training part only, never in validation or test. `gaussian_mixture` samples a
    per-class Gaussian mixture fitted on that class's rows; `interpolate` places points on
    segments between random pairs of the class's rows (SMOTE-style, without neighbours).
    Synthetic rows have `synthetic` = 1, real rows 0; it is not a feature."""

    train_only: ClassVar[bool] = True
    requires_split: ClassVar[bool] = True

    type: Literal["synthesize"]
    method: Literal["gaussian_mixture", "interpolate"] = "gaussian_mixture"
    target: int | None = Field(None, ge=1, description="rows per class after synthesis")
    components: int = Field(2, ge=1, le=50, description="gaussian_mixture components per class")
