"""Why a model decides: permutation importance of a tabular model's raw input columns,
scored through its model package (scikit-learn's permutation_importance), and Captum's
integrated gradients or saliency over sample inputs of an image or sequence model; with the
PNGs the report shows. No Prefect here: tasks/explain.py stores what these compute."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl
import torch

from trainflow.errors import ArtifactError, SpecError, TrainflowError
from trainflow.spec.explain import mismatch

# a model's inputs by their rank: (features,), (steps, channels), (channels, height, width)
KINDS = {1: "table", 2: "sequence", 3: "image"}
EXTRA = "pip install 'trainflow[explain]'"


def input_kind(input_shape: list[int]) -> str:
    """table, sequence or image, from a model's input shape."""
    return KINDS.get(len(input_shape), "table")


def chosen_method(method: str, kind: str) -> str:
    """The method evaluate.explain runs on a model of `kind` (auto resolved); a SpecError
    naming the field, the value and the fix for one that cannot serve it."""
    if method == "auto":
        return "permutation" if kind == "table" else "integrated_gradients"
    if (method == "permutation") == (kind == "table"):
        return method
    path, message = mismatch(method, kind).split(": ", 1)
    raise SpecError("the pipeline spec", [(path, message)])


# ---- permutation importance through the model package ---------------------------------


class PackageEstimator:
    """The model package as scikit-learn's permutation_importance sees an estimator: rows
    are an object array of the raw columns (the package's input, before any data step),
    turned back into a polars frame of the ingested types and scored by the package."""

    def __init__(self, model: Any, columns: list[str], schema: pl.Schema):
        self.model, self.columns, self.schema = model, columns, schema

    def fit(self, x: Any, y: Any) -> PackageEstimator:  # fitted already: the package
        return self

    def frame(self, x: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame(
            [
                pl.Series(c, x[:, i].tolist(), dtype=self.schema[c], strict=False)
                for i, c in enumerate(self.columns)
            ]
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.frame(x))


def scorer(metric: str, num_classes: int) -> Any:
    """A scorer (estimator, X, y) -> float, greater is better (log loss negated)."""
    from sklearn import metrics

    def score(estimator: PackageEstimator, x: np.ndarray, y: np.ndarray) -> float:
        probs = estimator.predict_proba(x)
        if metric == "log_loss":
            return -float(metrics.log_loss(y, probs, labels=list(range(num_classes))))
        predicted = probs.argmax(axis=1)
        if metric == "f1_macro":
            return float(metrics.f1_score(y, predicted, average="macro", zero_division=0))
        if metric == "balanced_accuracy":
            return float(metrics.balanced_accuracy_score(y, predicted))
        return float(metrics.accuracy_score(y, predicted))

    return score


def labels_of(rows: pl.DataFrame, target: str, classes: list[str]) -> np.ndarray:
    """The class index of each row's label (the target column as ingest read it)."""
    index = {c: i for i, c in enumerate(classes)}
    names = [str(v) for v in rows[target].to_list()]
    unknown = sorted(set(names) - index.keys())
    if unknown:
        raise ArtifactError(
            f"the test rows hold labels {unknown[:5]} of {target!r} that the model's classes "
            f"{classes[:10]} do not: the package is not this run's"
        )
    return np.asarray([index[n] for n in names], dtype=np.int64)


def permutation_importances(
    model: Any, rows: pl.DataFrame, metric: str, n_repeats: int, seed: int
) -> dict:
    """Permutation importance of each input column of the package `model` on `rows` (the
    raw test rows, target included): the drop of `metric` when the column's values are
    shuffled, mean and std over `n_repeats` shuffles, seeded; sorted, most important first."""
    from sklearn.inspection import permutation_importance

    columns = list(model.input_schema["columns"])
    y = labels_of(rows, model.input_schema["target"], model.classes)
    x = np.empty((rows.height, len(columns)), dtype=object)
    for i, c in enumerate(columns):
        x[:, i] = rows[c].to_list()
    estimator = PackageEstimator(model, columns, rows.select(columns).schema)
    score = scorer(metric, len(model.classes))
    found = permutation_importance(
        estimator, x, y, scoring=score, n_repeats=n_repeats, random_state=seed
    )
    table = [
        {"feature": c, "importance": float(m), "std": float(s)}
        for c, m, s in zip(columns, found.importances_mean, found.importances_std)
    ]
    table.sort(key=lambda r: (-r["importance"], r["feature"]))
    return {"baseline": score(estimator, x, y), "importances": table}


# ---- attributions (Captum) ---------------------------------------------------------------


def captum_attr() -> Any:
    """captum.attr, or a TrainflowError naming the extra that brings it."""
    try:
        from captum import attr
    except ImportError:
        raise TrainflowError(
            "evaluate.explain: integrated gradients and saliency need Captum, which is "
            f"not installed: {EXTRA} (or use method: permutation on a tabular model)"
        ) from None
    return attr


def sample_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """A seeded choice of `samples` of `count` inputs, in order."""
    chosen = np.random.default_rng(seed).choice(count, size=min(samples, count), replace=False)
    return np.sort(chosen)


def attributions(
    net: torch.nn.Module, x: torch.Tensor, method: str, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of each input and the attribution of each input value to it:
    integrated gradients from an all-zero baseline, or saliency (|gradient|)."""
    attr = captum_attr()
    net = net.eval()
    with torch.no_grad():
        predicted = net(x).argmax(dim=1)
    inputs = x.clone().float().requires_grad_(True)
    if method == "saliency":
        found = attr.Saliency(net).attribute(inputs, target=predicted, abs=True)
    else:
        found = attr.IntegratedGradients(net).attribute(
            inputs, baselines=torch.zeros_like(inputs), target=predicted, n_steps=steps
        )
    return predicted.numpy(), found.detach().float().numpy()


def attribution_maps(found: np.ndarray, kind: str) -> np.ndarray:
    """One map per input: |attribution| summed over channels (image: (H, W)), or as
    (features, steps) for a sequence."""
    magnitude = np.abs(found)
    return magnitude.sum(axis=1) if kind == "image" else magnitude.transpose(0, 2, 1)


def channel_importances(maps: np.ndarray) -> list[dict]:
    """A sequence model's input channels by mean |attribution| over the samples and steps
    (`maps`: (samples, channels, steps)), the largest first."""
    per_channel = maps.mean(axis=(0, 2))
    return [
        {"feature": f"channel {c}", "importance": float(per_channel[c]), "std": 0.0}
        for c in np.argsort(-per_channel, kind="stable")
    ]


# ---- pictures ------------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp
    return buffer.getvalue()


def _figure(width: float, height: float) -> Any:
    import matplotlib  # here, not at the top: only drawing pays for the import

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def importance_png(table: list[dict], metric: str) -> bytes:
    """A horizontal bar chart of the importances in `table` (the top first), with their std."""
    rows = table[::-1]  # barh draws bottom up: the most important on top
    figure = _figure(7, 1.2 + 0.32 * len(rows))
    axes = figure.subplots()
    axes.barh(
        [r["feature"] for r in rows], [r["importance"] for r in rows], xerr=[r["std"] for r in rows]
    )
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.set(
        xlabel=f"drop in test {metric} when the column is permuted",
        title="permutation importance (raw input columns, test part)",
    )
    return _png(figure)


def attribution_png(
    x: np.ndarray, maps: np.ndarray, kind: str, titles: list[str], method: str
) -> bytes:
    """Each sample input (top row) above its attribution map (bottom row)."""
    count = len(maps)
    figure = _figure(1.8 * count + 0.6, 4.2)
    grid = figure.subplots(2, count, squeeze=False)
    for i in range(count):
        shown = x[i].mean(axis=0) if kind == "image" else x[i].T
        grid[0][i].imshow(shown, cmap="gray" if kind == "image" else "viridis", aspect="auto")
        grid[1][i].imshow(maps[i], cmap="inferno", aspect="auto")
        grid[0][i].set_title(titles[i], fontsize=8)
        for axes in (grid[0][i], grid[1][i]):
            axes.set_xticks([])
            axes.set_yticks([])
    grid[0][0].set_ylabel("input", fontsize=8)
    grid[1][0].set_ylabel(method.replace("_", " "), fontsize=8)
    return _png(figure)
