"""evaluate.explain: permutation importance of a tabular model's raw columns (through the real
pipeline and its model package), Captum attributions on an image model, the report's section
and the UI table, and the clear refusals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainflow import explain
from trainflow.engine.model_folder import build_model
from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.explain import ExplainSpec
from trainflow.spec.model import CNNParams, RecurrentParams
from trainflow.spec.pipeline import validate_spec

ROWS = 600


def planted_csv(path: Path) -> None:
    """`signal` decides the label, `weak` and the text column `colour` nudge it, `noise` is
    pure noise (drawn from another generator than the label's inputs)."""
    rng, other = np.random.default_rng(0), np.random.default_rng(1)
    signal, weak = rng.uniform(-1, 1, ROWS), rng.uniform(-1, 1, ROWS)
    colour = rng.choice(["red", "blue"], ROWS)
    noise = other.normal(0, 1, ROWS)
    label = np.where(signal + 0.4 * weak + 0.3 * (colour == "red") - 0.15 > 0, "yes", "no")
    lines = ["signal,weak,colour,noise,label"]
    lines += [
        f"{s:.5f},{w:.5f},{c},{n:.5f},{y}"
        for s, w, c, n, y in zip(signal, weak, colour, noise, label)
    ]
    path.write_text("\n".join(lines) + "\n")


def planted_spec(tmp_path: Path, explain_section: dict):
    planted_csv(tmp_path / "planted.csv")
    return validate_spec(
        {
            "name": "planted",
            "seed": 0,
            "data": {
                "source": {"type": "csv", "path": str(tmp_path / "planted.csv"), "target": "label"},
                "steps": [
                    {"type": "split", "validation": 0.15, "test": 0.3},
                    {"type": "encode", "method": "one_hot"},
                    {"type": "normalize", "method": "standard"},
                ],
            },
            "model": {"type": "mlp", "hidden_layers": 1, "units": [16]},
            "train": {"optimizer": {"type": "adam"}, "lr": 0.01, "batch_size": 32, "epochs": 25},
            "evaluate": {"explain": explain_section},
            "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
        }
    )


@pytest.mark.usefixtures("prefect_engine")
def test_permutation_importance_ranks_the_planted_feature_first_and_noise_last(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from trainflow.flows.pipeline import pipeline
    from trainflow.tasks.explain import explain_model

    spec = planted_spec(tmp_path, {"method": "permutation", "top_k": 4, "n_repeats": 5})
    result = pipeline(spec)
    run_dir = Path(result["run_dir"])
    summary = json.loads((run_dir / "metrics.json").read_text())["explain"]
    ranking = [r["feature"] for r in summary["importances"]]
    # by the raw columns' names, before one-hot encoding and scaling
    assert sorted(ranking) == ["colour", "noise", "signal", "weak"]
    assert ranking[0] == "signal" and ranking[-1] == "noise", summary["importances"]
    assert summary["importances"][0]["importance"] > 0.2
    assert summary["rows"] == result["data"]["splits"].meta["parts"]["test"]["rows"]
    # the report's section, its chart beside it, and the table in the Prefect UI
    report = (run_dir / "report.md").read_text()
    assert "## Why the model decides (permutation, test part)" in report
    assert "| signal |" in report and "![explanation](explain.png)" in report
    assert (run_dir / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["planted-explain"]))
        )
    assert artifacts and artifacts[0].type == "table"
    assert "signal" in json.dumps(artifacts[0].data)
    # deterministic with the run seed: the task again, in another store, gives the same table
    args = (result["model"], result["data"], result["package"], spec.data.pre_split)
    again = explain_model.fn(*args, spec.evaluate.explain, spec.seed, str(tmp_path / "again"))
    assert again.meta["explain"] == summary
    # a method that cannot serve a tabular model: one clear message, naming the fix
    with pytest.raises(SpecError, match="use permutation") as refused:
        explain_model.fn(
            *args, ExplainSpec(method="saliency"), spec.seed, str(tmp_path / "refused")
        )
    assert "evaluate.explain.method: 'saliency' explains image and sequence models" in str(
        refused.value
    )


def patch_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 noise images whose class lives only in the top-left 3x3 patch (bright or dark)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, 8, 8, generator=generator) * 0.5
    y = torch.randint(0, 2, (count,), generator=generator)
    x[:, 0, :3, :3] += (y.float() * 2 - 1).view(-1, 1, 1) * 1.5
    return x, y


@pytest.fixture(scope="module")
def trained_cnn() -> torch.nn.Module:
    """trainflow's cnn builder, trained (plain full-batch Adam) on patch images."""
    torch.manual_seed(0)
    params = CNNParams(type="cnn", channels=[8], hidden=16, norm="none")
    net = build_model(params, [1, 8, 8], 2)
    x, y = patch_images(128, 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


# integrated gradients puts most of the mass in the patch; saliency (a raw gradient, spread
# by the 3x3 kernels) less, but still many times more per pixel than elsewhere
@pytest.mark.parametrize(
    "method,mass,density", [("integrated_gradients", 0.5, 5), ("saliency", 0.25, 2.5)]
)
def test_attributions_put_most_mass_on_the_patch_that_carries_the_class(
    trained_cnn, method, mass, density
):
    x, y = patch_images(64, 1)
    chosen = explain.sample_indices(len(x), 8, seed=0)
    predicted, found = explain.attributions(trained_cnn, x[chosen], method, steps=32)
    assert (predicted == y[chosen].numpy()).mean() >= 0.9  # the model learned the patch
    maps = explain.attribution_maps(found, "image")
    assert maps.shape == (8, 8, 8)
    share = maps[:, :3, :3].sum() / maps.sum()  # the patch is 9 of 64 pixels (14 %)
    assert share > mass, share
    assert (share / 9) / ((1 - share) / 55) > density, share
    png = explain.attribution_png(x[chosen].numpy(), maps, "image", ["t"] * 8, method)
    assert png[:4] == b"\x89PNG"


def test_a_sequence_model_ranks_the_channel_that_carries_the_class_first():
    """A GRU over (12 steps, 3 channels) where only channel 1's sign carries the class."""
    torch.manual_seed(0)
    net = build_model(RecurrentParams(type="gru", hidden=8), [12, 3], 2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 12, 3, generator=generator)
    y = torch.randint(0, 2, (128,), generator=generator)
    x[:, :, 1] = x[:, :, 1].abs() * (y.float() * 2 - 1).view(-1, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    net.eval()
    predicted, found = explain.attributions(net, x[:8], "integrated_gradients", steps=16)
    assert (predicted == y[:8].numpy()).mean() >= 0.75
    maps = explain.attribution_maps(found, "sequence")
    assert maps.shape == (8, 3, 12)  # (samples, channels, steps): drawn channels by steps
    ranked = explain.channel_importances(maps)
    assert ranked[0]["feature"] == "channel 1", ranked
    assert explain.attribution_png(x[:8].numpy(), maps, "sequence", ["t"] * 8, "ig")[:4] == (
        b"\x89PNG"
    )


def test_samples_are_a_seeded_choice():
    first = explain.sample_indices(100, 8, seed=3)
    assert first.tolist() == explain.sample_indices(100, 8, seed=3).tolist()
    assert first.tolist() != explain.sample_indices(100, 8, seed=4).tolist()
    assert explain.sample_indices(5, 8, seed=3).tolist() == [0, 1, 2, 3, 4]


def test_method_auto_and_the_kinds_a_method_cannot_serve():
    assert explain.chosen_method("auto", "table") == "permutation"
    assert explain.chosen_method("auto", "image") == "integrated_gradients"
    assert explain.chosen_method("saliency", "sequence") == "saliency"
    with pytest.raises(SpecError) as refused:
        explain.chosen_method("permutation", "image")
    assert (
        "evaluate.explain.method: 'permutation' explains tabular models; this model takes "
        "image inputs: use integrated_gradients or saliency (or auto)"
    ) in str(refused.value)


def test_captum_missing_names_the_extra(monkeypatch, trained_cnn):
    monkeypatch.setitem(sys.modules, "captum", None)  # as if not installed: import fails
    with pytest.raises(TrainflowError, match=r"pip install 'trainflow\[explain\]'"):
        explain.attributions(trained_cnn, patch_images(2, 0)[0], "saliency", steps=2)


def test_the_spec_names_the_allowed_methods():
    with pytest.raises(SpecError, match="evaluate.explain.method") as refused:
        validate_spec(
            {
                "name": "x",
                "data": {"source": {"type": "sklearn", "dataset": "iris"}},
                "model": {"type": "mlp"},
                "evaluate": {"explain": {"method": "shap"}},
            }
        )
    assert "permutation" in str(refused.value) and "integrated_gradients" in str(refused.value)


def test_permutation_on_an_image_model_is_refused_before_any_task_runs():
    from trainflow.spec.pipeline import load_spec

    root = Path(__file__).resolve().parents[2]
    with pytest.raises(SpecError) as refused:
        load_spec(
            root / "pipelines" / "digits_cnn.yaml", ["evaluate.explain={method: permutation}"]
        )
    assert (
        "evaluate.explain.method: 'permutation' explains tabular models; this model takes "
        "image inputs: use integrated_gradients or saliency (or auto)"
    ) in str(refused.value)
    spec = load_spec(root / "pipelines" / "digits_cnn.yaml", ["evaluate.explain={}"])
    assert spec.evaluate.explain.method == "auto"  # auto serves any model


@pytest.mark.usefixtures("prefect_engine")
def test_an_image_model_gets_attributions_of_seeded_samples_in_the_report(tmp_path):
    """digits_cnn, one epoch: the explain task draws Captum's attributions over a seeded
    choice of test images; the report lists them beside explain.png."""
    from trainflow.flows.pipeline import pipeline
    from trainflow.spec.pipeline import load_spec

    root = Path(__file__).resolve().parents[2]
    spec = load_spec(
        root / "pipelines" / "digits_cnn.yaml",
        [
            f"outputs.store={tmp_path / 'store'}",
            f"outputs.runs={tmp_path / 'runs'}",
            "train.epochs=1",
            "train.augment=null",
            "evaluate.cv=null",
            "ensemble=null",
            "compress={}",
            "evaluate.explain={method: auto, samples: 4, steps: 8}",
        ],
    )
    result = pipeline(spec)
    run_dir = Path(result["run_dir"])
    explained = json.loads((run_dir / "metrics.json").read_text())["explain"]
    assert explained["method"] == "integrated_gradients" and explained["kind"] == "image"
    tested = result["data"]["splits"].meta["parts"]["test"]["rows"]
    chosen = explain.sample_indices(tested, 4, spec.seed).tolist()
    assert [s["sample"] for s in explained["samples"]] == chosen
    assert all(s["attribution"] > 0 for s in explained["samples"])
    report = (run_dir / "report.md").read_text()
    assert "## Why the model decides (integrated gradients, test part)" in report
    assert f"| {chosen[0]} | " in report
    assert (run_dir / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_permutation_importance_of_a_run_that_cannot_package_is_refused_at_validation():
    """It scores through the model package: a flag from a fitted isolation forest cannot
    be packaged, so the spec is refused before any task runs (not at the explain task)."""
    from trainflow.spec.pipeline import load_spec

    root = Path(__file__).resolve().parents[2]
    flagged = (
        "data.steps=[{type: anomalies, method: isolation_forest, action: flag}, {type: split}]"
    )
    with pytest.raises(SpecError) as refused:
        load_spec(root / "pipelines" / "breast_cancer_mlp.yaml", [flagged, "evaluate.explain={}"])
    message = str(refused.value)
    assert "evaluate.explain: permutation importance" in message
    assert "data.steps.0 cannot be packaged" in message and "use method zscore or iqr" in message
    # without explain the run is allowed (it trains, with no package and a warning)
    load_spec(root / "pipelines" / "breast_cancer_mlp.yaml", [flagged])
