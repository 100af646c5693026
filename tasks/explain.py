"""Explain (evaluate.explain): why the model decides, on the test part. A tabular model gets
the permutation importance of each raw input column, scored through the run's model package;
an image or sequence model gets Captum attributions over a seeded choice of test inputs.
The report shows the table and the PNG; publish_report puts the table in the UI."""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from trainflow import explain
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine.model_folder import load_model
from trainflow.errors import TrainflowError
from trainflow.spec.explain import ExplainSpec
from trainflow.tasks.train import load_splits
from trainflow.testrows import raw_test_rows

PNG = "explain.png"
TABLE = "explain.json"


@task(name="explain", **CACHED)
def explain_model(
    model: ArtifactRef,
    data: dict,
    package: str | None,
    pre_split: list[Any],
    params: ExplainSpec,
    seed: int,
    store: str,
) -> ArtifactRef:
    """Explain `model` (the train task's) on the test part. `data`: the data flow's refs
    (the raw test rows are traced from them); `package`: the run's model package, which
    scores the permuted raw rows; `pre_split`: the spec's pre-split steps; `seed`: the run's,
    for the shuffles and the choice of samples."""
    net, info = load_model(model)
    kind = explain.input_kind(info["input_shape"])
    method = explain.chosen_method(params.method, kind)
    if method == "permutation":
        found = permuted(data, package, pre_split, params, seed)
        png = explain.importance_png(found["importances"][: params.top_k], params.metric)
    else:
        found, png = attributed(net, info, data["shards"], kind, method, params, seed)
    summary = {"method": method, "kind": kind, **found}
    shown = {**summary, "importances": summary["importances"][: params.top_k]}
    target = Store(store)
    with target.writer("metrics") as staging:
        (staging / TABLE).write_text(json.dumps(summary, indent=1, sort_keys=True))
        (staging / PNG).write_bytes(png)
        return target.commit(staging, "metrics", meta={"explain": shown})


def permuted(
    data: dict, package: str | None, pre_split: list[Any], params: ExplainSpec, seed: int
) -> dict:
    """Permutation importance of the raw columns, through the package (test part)."""
    if package is None:
        raise TrainflowError(
            "evaluate.explain: permutation importance scores the raw test rows through the "
            "run's model package, and this run has none (the package task's warning says "
            "why): remove evaluate.explain or the data step that cannot be packaged"
        )
    from trainflow.predictor import load_model as load_package_model

    rows = raw_test_rows(data["ingested"], data["steps"], pre_split, data["raw_splits"], seed)
    found = explain.permutation_importances(
        load_package_model(package), rows, params.metric, params.n_repeats, seed
    )
    return {**found, "metric": params.metric, "n_repeats": params.n_repeats, "rows": rows.height}


def attributed(
    net: Any,
    info: dict,
    shards: ArtifactRef,
    kind: str,
    method: str,
    params: ExplainSpec,
    seed: int,
) -> tuple[dict, bytes]:
    """Captum attributions of the predicted class over a seeded choice of test inputs."""
    test = load_splits(shards, ("test",))["test"]
    chosen = explain.sample_indices(len(test), params.samples, seed)
    x = test.x[chosen]
    predicted, found = explain.attributions(net, x, method, params.steps)
    maps = explain.attribution_maps(found, kind)
    classes = list(info["classes"])
    truth = test.y[chosen].tolist()
    samples = [
        {
            "sample": int(i),
            "true": classes[t],
            "predicted": classes[p],
            "attribution": float(m.sum()),
        }
        for i, t, p, m in zip(chosen, truth, predicted, maps)
    ]
    titles = [f"#{s['sample']}: {s['true']} -> {s['predicted']}" for s in samples]
    png = explain.attribution_png(x.numpy(), maps, kind, titles, method)
    importances = explain.channel_importances(maps) if kind == "sequence" else []
    return {"samples": samples, "importances": importances}, png


# ---- what the report and the UI show of an explanation (tasks/report.py calls these) -----


def explanation_lines(explained: dict | None) -> list[str]:
    """The report's section on evaluate.explain."""
    if not explained:
        return []
    method = explained["method"].replace("_", " ")
    out = ["", f"## Why the model decides ({method}, test part)"]
    if explained["method"] == "permutation":
        out += [
            f"drop in test {explained['metric']} (baseline {explained['baseline']:.4f}) when a "
            f"raw input column is shuffled, mean and std over {explained['n_repeats']} "
            f"shuffles of {explained['rows']} rows; the top {len(explained['importances'])}:",
        ]
    rows = explained["importances"]
    if rows:
        out += ["", "| feature | importance | std |", "|---|---|---|"]
        out += [f"| {r['feature']} | {r['importance']:.4f} | {r['std']:.4f} |" for r in rows]
    for s in explained.get("samples", []):
        if s is explained["samples"][0]:
            out += ["", "| sample | true | predicted | total attribution |", "|---|---|---|---|"]
        out.append(f"| {s['sample']} | {s['true']} | {s['predicted']} | {s['attribution']:.4f} |")
    return [*out, "", f"![explanation]({PNG})"]


def publish_explanation(explained: dict | None, pipeline: str, key: str) -> None:
    """The importances (or the attributed samples) as a Prefect table artifact."""
    if not explained:
        return
    rows = explained["importances"] or explained.get("samples", [])
    create_table_artifact(
        rows,
        key=f"{key}-explain",
        description=f"{pipeline}: {explained['method'].replace('_', ' ')} on the test part",
    )
