"""Training knobs (issue 4): each family changes what it should, and bad values are named."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainflow.engine import checkpoint, optim, schedule
from trainflow.engine.data import Split, batches, weighted_loss
from trainflow.engine.loop import EpochBatches, fit, train_epoch
from trainflow.engine.state import TrainingState
from trainflow.engine.training import optimizer_factory
from trainflow.engine.update import Update
from trainflow.errors import SpecError, TrainflowError
from trainflow.models.mlp import mlp
from trainflow.spec.pipeline import validate_spec
from trainflow.spec.schedule import Warmup
from trainflow.spec.train import GradClip, TrainSpec

SCHEDULE_TYPES = [
    "step",
    "multi_step",
    "exponential",
    "cosine",
    "cosine_restarts",
    "cyclic",
    "one_cycle",
    "polynomial",
    "plateau",
]


def lrs(spec: dict, steps: int = 40, per_epoch: int = 4, lr: float = 0.1) -> list[float]:
    """The learning rate before each of `steps` optimizer steps under a schedule spec."""
    train = TrainSpec(lr=lr, schedule=spec)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, _ = schedule.build(train.schedule, opt, lr, per_epoch, steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler:
            scheduler.step()
    return seen


def test_linear_and_exponential_warmup_rise_as_declared():
    linear = lrs({"type": "cosine", "warmup": {"steps": 5, "start_factor": 0.1}})
    assert linear[:6] == pytest.approx([0.01, 0.028, 0.046, 0.064, 0.082, 0.1])
    assert max(linear) == pytest.approx(0.1) and linear[-1] < 0.01  # then cosine down
    geometric = lrs(
        {"type": "polynomial", "warmup": {"steps": 4, "start_factor": 0.01, "mode": "exponential"}}
    )
    assert geometric[:5] == pytest.approx([0.1 * 0.01 ** (1 - k / 4) for k in range(5)])
    fraction = lrs({"type": "cosine", "warmup": {"fraction": 0.25}}, steps=40)
    assert np.argmax(fraction) == 10  # a quarter of 40 steps


@pytest.mark.parametrize("kind", SCHEDULE_TYPES)
def test_every_schedule_moves_the_learning_rate_as_declared(kind):
    extra = {"milestones": [3, 6]} if kind == "multi_step" else {}
    if kind == "step":
        extra = {"step_epochs": 2, "gamma": 0.5}
    seen = lrs({"type": kind, **extra})
    if kind == "step":  # 4 steps per epoch: halved every 8 steps
        assert seen[7] == pytest.approx(0.1) and seen[8] == pytest.approx(0.05)
        assert seen[16] == pytest.approx(0.025)
    elif kind == "multi_step":
        assert seen[11] == pytest.approx(0.1) and seen[12] == pytest.approx(0.01)
        assert seen[24] == pytest.approx(0.001)
    elif kind == "exponential":  # gamma 0.95 per epoch, spread over its 4 steps
        assert seen[4] == pytest.approx(0.1 * 0.95)
    elif kind in ("cosine", "polynomial"):
        assert seen[0] == pytest.approx(0.1) and seen[-1] < 0.01
        assert all(a >= b for a, b in zip(seen, seen[1:]))
    elif kind == "cosine_restarts":  # period 10 epochs = 40 steps: one full period
        assert seen[0] == pytest.approx(0.1) and seen[39] < 0.001
    elif kind == "cyclic":
        assert seen[0] == pytest.approx(1e-4) and max(seen) > seen[0]
    elif kind == "one_cycle":  # up to lr at 30 % of training, then far below the start
        assert np.argmax(seen) == pytest.approx(12, abs=1) and seen[-1] < seen[0]
    else:  # plateau: per epoch, on the monitored metric; steps leave it alone
        assert seen == [0.1] * 40


def test_plateau_lowers_the_rate_when_validation_stops_improving():
    x = torch.randn(64, 4)
    data = Split(x, (x[:, 0] > 0).long())
    spec = TrainSpec(
        lr=0.05,
        epochs=8,
        device="cpu",
        checkpoint_every=0,
        schedule={"type": "plateau", "patience": 0, "factor": 0.5, "monitor": "val_accuracy"},
    )
    # each input twice, once per class: validation accuracy is 0.5 whatever the model does
    flat = Split(torch.cat([x, x]), torch.cat([torch.zeros(64), torch.ones(64)]).long())
    result = fit(mlp([4], 2, [8]), data, flat, spec, 0, optimizer_factory(spec))
    rates = [row["lr"] for row in result.history]
    assert rates[0] == pytest.approx(0.05) and rates[-1] < rates[0] / 4


def test_early_stopping_reads_its_metric_in_its_mode():
    """val_loss is watched for its minimum, val_accuracy for its maximum (EarlyStopping.mode):
    the best epoch kept is the first at the extreme."""
    generator = torch.Generator().manual_seed(0)
    x, noisy = torch.randn(200, 4, generator=generator), torch.randn(80, 4, generator=generator)
    data = Split(x, (x[:, 0] > 0).long())
    val = Split(noisy, (noisy[:, 0] + noisy[:, 1] > 0).long())
    for monitor, pick in (("val_loss", min), ("val_accuracy", max)):
        spec = TrainSpec(
            lr=0.05,
            epochs=10,
            device="cpu",
            checkpoint_every=0,
            early_stopping={"monitor": monitor, "patience": 10},
        )
        assert spec.early_stopping.mode == ("min" if pick is min else "max")
        result = fit(mlp([4], 2, [8]), data, val, spec, 0, optimizer_factory(spec))
        values = [row[monitor] for row in result.history]
        assert result.best_epoch == values.index(pick(values)) + 1


def test_warmup_longer_than_training_is_a_clear_error():
    with pytest.raises(
        TrainflowError,
        match=r"warmup lasts 100 optimizer steps but training "
        r"has only 40 \(4 per epoch\)",
    ):
        lrs({"type": "cosine", "warmup": {"steps": 100}})


def _sgd_step(update: Update, grad_scale: float = 100.0):
    torch.manual_seed(0)
    net = nn.Linear(8, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    before = [p.detach().clone() for p in net.parameters()]
    (net(torch.randn(16, 8)).sum() * grad_scale).backward()
    update.step(TrainingState(net, opt))
    return [b - p.detach() for b, p in zip(before, net.parameters())]  # = the applied gradient


def test_clipping_bounds_the_gradient_norm_or_each_value():
    free = _sgd_step(Update())
    assert torch.cat([g.flatten() for g in free]).norm() > 10
    by_norm = _sgd_step(Update(clip=GradClip(max_norm=0.5)))
    assert torch.cat([g.flatten() for g in by_norm]).norm() == pytest.approx(0.5, rel=1e-4)
    by_value = _sgd_step(Update(clip=GradClip(value=0.2)))
    assert max(g.abs().max() for g in by_value) <= 0.2 + 1e-6


def test_accumulating_k_batches_of_n_equals_one_batch_of_k_times_n():
    x = torch.randn(32, 6)
    data = Split(x, (x.sum(1) > 0).long())
    results = []
    for batch, k in ((32, 1), (8, 4)):
        torch.manual_seed(0)
        net = mlp([6], 2, [5])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        state = TrainingState(net, opt)
        train_epoch(net, state, EpochBatches(batches(data, batch)), Update(accumulate=k))
        results.append((state.steps, [p.detach() for p in net.parameters()]))
    assert results[0][0] == results[1][0] == 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_label_smoothing_l1_and_max_steps():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    smoothed = weighted_loss(logits, y, None, None, 0.2)
    assert smoothed == pytest.approx(
        float(nn.functional.cross_entropy(logits, y, label_smoothing=0.2))
    )
    net = mlp([4], 2, [3])
    with torch.no_grad():
        expected = 0.01 * sum(p.abs().sum() for p in net.parameters() if p.dim() > 1)
        assert float(Update(l1=0.01).penalty(net)) == pytest.approx(float(expected))
    x = torch.randn(200, 4)
    data = Split(x, (x[:, 0] > 0).long())
    norms = []
    for l1 in (0.0, 0.05):
        spec = TrainSpec(lr=0.01, epochs=5, l1=l1, device="cpu", checkpoint_every=0)
        torch.manual_seed(0)
        model = mlp([4], 2, [16])
        fit(model, data, data, spec, 0, optimizer_factory(spec))
        norms.append(sum(float(p.detach().abs().sum()) for p in model.parameters() if p.dim() > 1))
    assert norms[1] < 0.7 * norms[0]  # the penalty shrinks the weights
    spec = TrainSpec(epochs=50, batch_size=16, max_steps=30, device="cpu", checkpoint_every=0)
    result = fit(mlp([4], 2, [8]), data, data, spec, 0, optimizer_factory(spec))
    assert result.history[-1]["steps"] == 30 and len(result.history) == 3  # 13 steps per epoch


def test_bf16_autocast_on_cpu_runs_the_layers_in_bfloat16_and_learns():
    x = torch.randn(256, 4)
    data = Split(x, (x[:, 0] + x[:, 1] > 0).long())
    model = mlp([4], 2, [32])
    dtypes = set()
    model[1].register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    spec = TrainSpec(lr=0.01, epochs=15, precision="bf16", device="cpu", checkpoint_every=0)
    result = fit(model, data, data, spec, 0, optimizer_factory(spec))
    assert dtypes == {torch.bfloat16}
    assert result.history[-1]["val_accuracy"] > 0.9


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TrainSpec(precision="fp16", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            TrainflowError, match="fp16 needs a CUDA device, training runs on cpu; use bf16"
        ):
            Update.from_spec(TrainSpec(precision="fp16"), torch.device("cpu"))


def test_fp16_grad_scaler_path_unscales_before_clipping_and_skips_overflowing_steps(tmp_path):
    """The fp16 update path is device-generic (torch.amp.GradScaler), so its logic runs here on
    CPU (fp16 autocast works on CPU; only the spec refuses it there, for speed): clipping and
    the recorded norm see the true gradient, an overflowing step leaves the weights alone and
    halves the scale, and the scaler's state survives a checkpoint round trip."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def loss_of(net):
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        assert out.dtype == torch.float16
        return nn.functional.cross_entropy(out.float(), y)

    loss_of(reference).backward()  # unscaled fp16-autocast gradients
    true_norm = float(nn.utils.get_total_norm([p.grad for p in reference.parameters()]))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    update = Update(clip=GradClip(max_norm=true_norm / 2), precision=torch.float16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainingState(model, opt, scaler=scaler)
    update.backward(model, loss_of(model), scaler)
    assert math.isclose(
        float(nn.utils.get_total_norm([p.grad for p in model.parameters()])),
        true_norm * 2**10,
        rel_tol=1e-3,
    )  # scaled on the way back
    update.step(state)
    assert math.isclose(state.position.grad_norms[0], true_norm, rel_tol=1e-3)
    with torch.no_grad():
        moved = torch.cat(
            [(p - q).flatten() for p, q in zip(model.parameters(), reference.parameters())]
        )
    assert math.isclose(float(moved.norm()), 0.1 * true_norm / 2, rel_tol=1e-2)  # clipped step
    assert scaler.get_scale() == 2.0**10

    before = [p.detach().clone() for p in model.parameters()]
    handle = model[0].weight.register_hook(lambda g: g * float("inf"))
    update.backward(model, loss_of(model), scaler)
    update.step(state)
    handle.remove()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0**9 and state.steps == 2

    path = tmp_path / "last.pt"
    checkpoint.save(path, state.state_dict())
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(checkpoint.load(path)["scaler"])
    assert restored.get_scale() == 2.0**9


def test_parameter_groups_skip_decay_on_biases_and_norms_and_scale_lr_by_name():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    groups = optim.param_groups(net, 0.1, 0.01, ["bias", "norm"], {"2.*": 0.5})
    by_params = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_params[id(net[0].weight)] == (0.1, 0.01)
    assert by_params[id(net[0].bias)] == (0.1, 0.0)
    assert by_params[id(net[1].weight)] == (0.1, 0.0)  # norm layer
    assert by_params[id(net[2].weight)] == (0.05, 0.01)  # lower lr by name
    spec = TrainSpec(
        optimizer={"type": "rmsprop", "momentum": 0.5}, weight_decay=0.01, no_decay=["bias"]
    )
    opt = optimizer_factory(spec)(net)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["momentum"] == 0.5
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.01]


def test_bad_knob_values_name_their_path():
    base = {
        "name": "t",
        "model": {"type": "mlp"},
        "data": {"source": {"type": "sklearn", "dataset": "iris"}},
    }
    with pytest.raises(SpecError) as err:
        validate_spec(
            {
                **base,
                "train": {
                    "optimizer": {"type": "adagrad", "momentum": 0.9},
                    "schedule": {"type": "one_cycle", "warmup": {"steps": 10}},
                    "grad_clip": {"max_norm": 1.0, "value": 0.5},
                },
            }
        )
    message = str(err.value)
    assert "train.optimizer.momentum" in message  # adagrad has no momentum
    assert "one_cycle ramps up by itself" in message
    assert "give grad_clip either max_norm or value" in message
    with pytest.raises(ValueError, match="either steps or fraction"):
        Warmup(steps=3, fraction=0.1)
    assert math.isfinite(lrs({"type": "cosine"})[-1])


@pytest.mark.parametrize(
    "scheme,expected_std",
    [
        ("xavier_normal", math.sqrt(2 / (400 + 300))),
        ("kaiming_normal", math.sqrt(2 / 400)),
        ("xavier_uniform", math.sqrt(2 / (400 + 300))),
        ("kaiming_uniform", math.sqrt(2 / 400)),
    ],
)
def test_weight_initialization_schemes_have_their_spread_and_zero_biases(scheme, expected_std):
    torch.manual_seed(0)
    net = mlp([400], 2, [300], init=scheme)
    weight, bias = net[1].weight.detach(), net[1].bias.detach()
    assert float(weight.std()) == pytest.approx(expected_std, rel=0.03)
    assert torch.count_nonzero(bias) == 0


def test_orthogonal_init_norm_layers_and_spectral_norm():
    net = mlp([16], 2, [16, 16], init="orthogonal", norm="layer")
    w = net[1].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)
    assert sum(isinstance(m, nn.LayerNorm) for m in net) == 2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp([4], 2, [8, 8], norm="batch")) == 2
    spectral = mlp([32], 2, [64], spectral_norm=True)
    spectral.train()
    for _ in range(20):  # power iterations run in training-mode forward passes
        spectral(torch.randn(8, 32))
    top = torch.linalg.matrix_norm(spectral[1].weight.detach(), ord=2)
    assert float(top) == pytest.approx(1.0, abs=0.05)
    from trainflow.models.cnn import cnn

    plain = cnn([1, 8, 8], 3, [4], norm="none", init="kaiming_normal")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain)


def test_deterministic_option_holds_during_training_and_is_restored():
    x = torch.randn(96, 4)
    data = Split(x, (x[:, 0] > 0).long())
    spec = TrainSpec(epochs=2, deterministic=True, device="cpu", checkpoint_every=0)
    runs, seen = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = mlp([4], 2, [8])
        model[1].register_forward_hook(
            lambda *_: seen.append(torch.are_deterministic_algorithms_enabled())
        )
        runs.append(fit(model, data, data, spec, 0, optimizer_factory(spec)))
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    assert runs[0].history == runs[1].history
    assert all(
        torch.equal(a, b) for a, b in zip(runs[0].best_state.values(), runs[1].best_state.values())
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit inside inductor
def test_torch_compile_trains_like_eager_and_saves_plain_state_dicts(tmp_path):
    import json

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    train, val = Split(x, (x[:, 0] > 0).long()), Split(x[:32], (x[:32, 0] > 0).long())
    results = {}
    for compiled in (False, True):
        spec = TrainSpec(
            lr=0.01, epochs=2, batch_size=32, device="cpu", compile=compiled, checkpoint_every=0
        )
        torch.manual_seed(0)
        net = mlp([6], 2, [16])
        out = tmp_path / str(compiled)
        out.mkdir()
        results[compiled] = fit(net, train, val, spec, 0, optimizer_factory(spec), out)
        assert "_orig_mod" not in json.dumps(list(checkpoint.load(out / "best.pt")["model"]))
    eager, compiled = (r.history for r in (results[False], results[True]))
    for a, b in zip(eager, compiled):  # fused kernels may round differently
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def small_data(n=160):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return Split(x, (x[:, 0] > 0).long()), Split(x[:32], (x[:32, 0] > 0).long())


def test_batch_ramp_grows_the_batch_and_the_schedule_spans_every_step():
    train, val = small_data()
    spec = TrainSpec(
        lr=0.1,
        epochs=5,
        batch_size=32,
        batch_ramp={"start": 8, "epochs": 3},
        schedule={"type": "cosine", "min_lr": 0.001},
        device="cpu",
        checkpoint_every=0,
    )
    torch.manual_seed(0)
    result = fit(mlp([6], 2, [8]), train, val, spec, 0, optimizer_factory(spec))
    assert [r["batch_size"] for r in result.history] == [8, 16, 24, 32, 32]
    steps = [r["steps"] for r in result.history]
    assert [b - a for a, b in zip([0, *steps], steps)] == [20, 10, 7, 5, 5]
    assert result.history[-1]["lr"] == pytest.approx(0.001)  # cosine ends on the last step
    with pytest.raises(ValueError, match=r"batch_ramp.start \(32\) must be below"):
        TrainSpec(batch_size=32, batch_ramp={"start": 32, "epochs": 2})


def test_auto_batch_finds_the_largest_batch_within_the_budget():
    from trainflow.engine.batchsize import largest_batch

    train, _ = small_data(4096)
    device = torch.device("cpu")
    torch.manual_seed(0)
    wide = mlp([6], 2, [1024, 1024])
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    sizes = [largest_batch(wide, train.x, 8, 4096, mb, device) for mb in (30, 60, 120)]
    assert sizes[0] < sizes[1] < sizes[2]  # more memory, a larger batch
    assert all(s % 8 == 0 and (s // 8) & (s // 8 - 1) == 0 for s in sizes)  # 8 x 2^k
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())
    narrow = mlp([6], 2, [16])
    assert largest_batch(narrow, train.x, 8, 4096, 120, device) == 4096  # capped by the data
    assert largest_batch(narrow, train.x, 8, 256, 120, device) == 256  # and by max
    with pytest.raises(TrainflowError, match="even batch_size 8 needs about"):
        largest_batch(wide, train.x, 8, 4096, 1, device)


def test_auto_batch_trains_exactly_like_the_batch_size_it_chose():
    train, val = small_data(512)
    runs = {}
    for name, knobs in (
        ("auto", {"auto_batch": {"memory_mb": 64, "max": 128}}),
        ("fixed", {"batch_size": 128}),
    ):
        spec = TrainSpec.model_validate(
            {
                "lr": 0.01,
                "epochs": 2,
                "batch_size": 16,
                "device": "cpu",
                "checkpoint_every": 0,
                **knobs,
            }
        )
        torch.manual_seed(0)
        net = mlp([6], 2, [32], dropout=0.2)
        runs[name] = (net, fit(net, train, val, spec, 0, optimizer_factory(spec)))
    assert runs["auto"][1].batch_size == 128
    assert runs["auto"][1].history == runs["fixed"][1].history
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            runs["auto"][0].state_dict().values(), runs["fixed"][0].state_dict().values()
        )
    )


def test_one_seed_drives_python_numpy_and_torch_and_devices_are_checked():
    import random

    from trainflow.engine.setup import resolve_device, seed_everything

    def draws(seed):
        order = seed_everything(seed)
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(())),
            torch.randperm(8, generator=order).tolist(),
        )

    assert draws(3) == draws(3) and draws(3) != draws(4)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    if not torch.cuda.is_available():
        with pytest.raises(
            TrainflowError,
            match="train.device: 'cuda' was requested but no CUDA device is available",
        ):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(TrainflowError, match="train.device: 'mps' was requested"):
            resolve_device("mps")
