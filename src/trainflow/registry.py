"""Every pluggable kind, by the name the YAML uses: name -> (params model, implementation).

Filled explicitly here, not by import side effects. The spec's unions are built from these
tables, so a new entry is one line here plus its params model and implementation.

The params models are imported here (they are pydantic models of `trainflow.spec`); an
implementation is named by its "module:attribute" and imported on first use, so that the spec
validates without torch, Prefect, polars or scikit-learn, and a task's code fingerprint
covers only the implementations it looks up (trainflow.caching).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from trainflow.spec import after_training as after
from trainflow.spec import ensemble, samplers, schedule, sources, steps
from trainflow.spec import model as models
from trainflow.spec import optimizers as optim
from trainflow.spec import quantize_auto as qauto
from trainflow.spec import structured_prune as structured


@cache
def resolve(at: str) -> Any:
    """The object a "module:attribute" reference names (imported once)."""
    module, _, attribute = at.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Entry:
    """A params model and where its implementation lives ("module:attribute").

    A stateful data step (`stateful=True`) has its `fit` and `apply` in
    `trainflow.transforms.<name>`: the scikit-learn contract its task, CV folds and prediction
    share, importable without Prefect.
    """

    params: type[BaseModel]
    at: str
    stateful: bool = False

    @property
    def module(self) -> str:
        return self.at.partition(":")[0]

    @property
    def impl(self) -> Any:
        return resolve(self.at)

    @property
    def transforms(self) -> str:
        """The Prefect-free module of a stateful step's fit and apply."""
        return "trainflow.transforms." + self.module.rpartition(".")[2]

    @property
    def fit(self) -> Any:
        return resolve(f"{self.transforms}:fit") if self.stateful else None

    @property
    def apply(self) -> Any:
        return resolve(f"{self.transforms}:apply") if self.stateful else None


def modules_of(entry: Entry) -> list[str]:
    """The modules an entry's code lives in: its params model's and its implementation's."""
    return [entry.params.__module__, entry.module]


SOURCES = {
    "sklearn": Entry(sources.SklearnSource, "trainflow.readers:SKLEARN"),
    "csv": Entry(sources.FileSource, "trainflow.readers:FILE"),
    "parquet": Entry(sources.FileSource, "trainflow.readers:FILE"),
    "image_folder": Entry(sources.ImageFolderSource, "trainflow.readers:IMAGE_FOLDER"),
    "sequences": Entry(sources.SequenceSource, "trainflow.readers:SEQUENCES"),
}
STEPS = {
    "clean": Entry(steps.CleanParams, "trainflow.tasks.clean:clean", stateful=True),
    "split": Entry(steps.SplitParams, "trainflow.tasks.split:split"),
    "normalize": Entry(steps.NormalizeParams, "trainflow.tasks.normalize:normalize", stateful=True),
    "encode": Entry(steps.EncodeParams, "trainflow.tasks.encode:encode", stateful=True),
    "resample": Entry(steps.ResampleParams, "trainflow.tasks.resample:resample", stateful=True),
    "outliers": Entry(steps.OutliersParams, "trainflow.tasks.outliers:outliers", stateful=True),
    "anomalies": Entry(steps.AnomaliesParams, "trainflow.tasks.anomalies:anomalies", stateful=True),
    "subsample": Entry(steps.SubsampleParams, "trainflow.tasks.subsample:subsample", stateful=True),
    "smooth": Entry(steps.SmoothParams, "trainflow.tasks.smooth:smooth", stateful=True),
    "synthesize": Entry(
        steps.SynthesizeParams, "trainflow.tasks.synthesize:synthesize", stateful=True
    ),
}
MODELS = {
    "mlp": Entry(models.MLPParams, "trainflow.models.mlp:mlp"),
    "cnn": Entry(models.CNNParams, "trainflow.models.cnn:cnn"),
    "rnn": Entry(models.RecurrentParams, "trainflow.models.recurrent:rnn"),
    "lstm": Entry(models.RecurrentParams, "trainflow.models.recurrent:lstm"),
    "gru": Entry(models.RecurrentParams, "trainflow.models.recurrent:gru"),
    "transformer": Entry(models.TransformerParams, "trainflow.models.transformer:transformer"),
}
OPTIMIZERS = {
    "sgd": Entry(optim.SGDParams, "trainflow.engine.optim:sgd"),
    "adam": Entry(optim.AdamParams, "trainflow.engine.optim:adam"),
    "adamw": Entry(optim.AdamParams, "trainflow.engine.optim:adam"),
    "rmsprop": Entry(optim.RMSpropParams, "trainflow.engine.optim:rmsprop"),
    "adagrad": Entry(optim.AdagradParams, "trainflow.engine.optim:adagrad"),
    "adadelta": Entry(optim.AdadeltaParams, "trainflow.engine.optim:adadelta"),
}
SCHEDULES = {
    "step": Entry(schedule.StepSchedule, "trainflow.engine.schedule:step_lr"),
    "multi_step": Entry(schedule.MultiStepSchedule, "trainflow.engine.schedule:multi_step"),
    "exponential": Entry(schedule.ExponentialSchedule, "trainflow.engine.schedule:exponential"),
    "cosine": Entry(schedule.CosineSchedule, "trainflow.engine.schedule:cosine"),
    "cosine_restarts": Entry(
        schedule.CosineRestartsSchedule, "trainflow.engine.schedule:cosine_restarts"
    ),
    "cyclic": Entry(schedule.CyclicSchedule, "trainflow.engine.schedule:cyclic"),
    "one_cycle": Entry(schedule.OneCycleSchedule, "trainflow.engine.schedule:one_cycle"),
    "polynomial": Entry(schedule.PolynomialSchedule, "trainflow.engine.schedule:polynomial"),
    "plateau": Entry(schedule.PlateauSchedule, "trainflow.engine.schedule:plateau"),
}
ENSEMBLES = {
    "soft_vote": Entry(ensemble.SoftVoteParams, "trainflow.ensembles:combine_soft_vote"),
    "hard_vote": Entry(ensemble.HardVoteParams, "trainflow.ensembles:combine_hard_vote"),
    "mean": Entry(ensemble.MeanParams, "trainflow.ensembles:combine_mean"),
    "weighted": Entry(ensemble.WeightedParams, "trainflow.ensembles:combine_weighted"),
    "stacking": Entry(ensemble.StackingParams, "trainflow.ensembles:combine_stacking"),
    "soup": Entry(ensemble.SoupParams, "trainflow.ensembles:combine_one"),
    "top_k_trials": Entry(ensemble.TopKTrialsParams, "trainflow.ensembles:combine_chosen"),
}
QUANTIZERS = {
    "dynamic_int8": Entry(after.DynamicInt8Params, "trainflow.compress:quantize_dynamic_int8"),
    "static_int8": Entry(after.StaticInt8Params, "trainflow.compress:quantize_static_int8"),
    "auto": Entry(qauto.AutoQuantizeParams, "trainflow.quantize_auto:choose"),
}
PRUNERS = {
    "l1_unstructured": Entry(
        after.L1UnstructuredParams, "trainflow.compress:prune_l1_unstructured"
    ),
    # whole units removed and the layers rebuilt smaller
    "l1_structured": Entry(structured.StructuredPruneParams, structured.IMPLEMENTATION),
    "l2_structured": Entry(structured.StructuredPruneParams, structured.IMPLEMENTATION),
}
# search.sampler and search.pruner: Optuna's, built by trainflow.study
SEARCH_SAMPLERS = {
    "grid": Entry(samplers.GridParams, "trainflow.study:grid_sampler"),
    "random": Entry(samplers.RandomParams, "trainflow.study:random_sampler"),
    "tpe": Entry(samplers.TPEParams, "trainflow.study:tpe_sampler"),
    "cmaes": Entry(samplers.CmaEsParams, "trainflow.study:cmaes_sampler"),
    "gp": Entry(samplers.GPParams, "trainflow.study:gp_sampler"),
}
SEARCH_PRUNERS = {
    "median": Entry(samplers.MedianParams, "trainflow.study:median_pruner"),
    "successive_halving": Entry(
        samplers.SuccessiveHalvingParams, "trainflow.study:successive_halving_pruner"
    ),
    "hyperband": Entry(samplers.HyperbandParams, "trainflow.study:hyperband_pruner"),
}


@dataclass(frozen=True)
class Task:
    """A Prefect task of a pipeline run, as the CLI, the flows' options and the spec's
    `orchestration` section know it.

    `inputs` names the parameters that take artifact refs, in order (`trainflow task NAME
    --input REF ...`; one name starting with `*` takes one or more; None: the task is not run
    alone). `reads` maps its other parameters to the spec section each takes. `trains`: it
    trains a model (and so carries the device tag); `io`: it reads or writes data files, so a
    transient I/O error is retried by default.
    """

    at: str
    inputs: tuple[str, ...] | None = ()
    reads: dict[str, str] = field(default_factory=dict)
    trains: bool = False
    io: bool = False

    @property
    def module(self) -> str:
        return self.at.partition(":")[0]

    @property
    def impl(self) -> Any:
        return resolve(self.at)


# Every task of a pipeline run by its Prefect name, in the order a run reaches them; the data
# steps (STEPS) run between `expect` and `shard`, each reading its own data.steps entry.
TASKS = {
    "ingest": Task(
        "trainflow.tasks.ingest:ingest", (), {"source": "data.source", "task": "task"}, io=True
    ),
    "expect": Task(
        "trainflow.tasks.expect:check_expectations", ("table",), {"expect": "data.expect"}
    ),
    # train.fit_on: train+validation: after split, before the post-split steps
    "pool_validation": Task("trainflow.tasks.pool:pool_validation", ("splits",), io=True),
    "shard": Task("trainflow.tasks.shard:shard", ("splits",), {"params": "data.shard"}, io=True),
    "train": Task(
        "trainflow.tasks.train:train_model",
        ("shards",),
        {"model": "model", "train": "train"},
        trains=True,
    ),
    "evaluate": Task(
        "trainflow.tasks.evaluate:evaluate_model", ("model", "shards"), {"evaluate": "evaluate"}
    ),
    "train_fold": Task(
        "trainflow.tasks.fold:train_fold",
        ("splits",),
        {"steps": "data.post_split", "model": "model", "train": "train"},
        trains=True,
    ),
    "ensemble": Task(
        "trainflow.tasks.ensemble:ensemble_folds", ("*folds",), {"params": "ensemble"}
    ),
    "distill": Task(
        "trainflow.tasks.distill:distill_model",
        ("model", "shards"),
        {"params": "compress.distill", "train": "train", "gate": "compress.gate"},
        trains=True,
    ),  # (before quantize: compress.distill.quantize quantizes the student)
    "quantize": Task(
        "trainflow.tasks.quantize:quantize_model",
        ("model", "shards"),
        {"params": "compress.quantize", "gate": "compress.gate"},
    ),
    "prune": Task(
        "trainflow.tasks.prune:prune_model",
        ("model", "shards"),
        {"params": "compress.prune", "train": "train", "gate": "compress.gate"},
        trains=True,
    ),
    "measure_latency": Task("trainflow.tasks.latency:measure_latency", None),
    "package": Task("trainflow.tasks.package:package_model", None),
    "explain": Task("trainflow.tasks.explain:explain_model", None),  # evaluate.explain
    "promote": Task("trainflow.tasks.promote:promote_model", None),
    "report": Task("trainflow.tasks.report:write_report", None),
    "publish_report": Task("trainflow.tasks.report:publish_report", None),
    "mlflow_log": Task("trainflow.tasks.mlflow_log:log_to_mlflow", None),
    # a search's trial (flows/search.py): cross-validates one variant of the spec
    "trial": Task("trainflow.tasks.trial:run_trial", None, trains=True),
    "report_study": Task("trainflow.tasks.trial:report_study", None),
    # search.nested: an outer fold's best spec scored on it, and the outer folds' report
    "outer_fold": Task("trainflow.tasks.trial:score_outer_fold", None, trains=True),
    "report_nested": Task("trainflow.tasks.trial:report_nested", None),
}
# The spec sections a task may run without (`trainflow task ensemble` on a spec with no
# ensemble): the kind whose first entry's defaults it then takes.
OPTIONAL_SECTIONS = {
    "ensemble": ENSEMBLES,
    "compress.quantize": QUANTIZERS,
    "compress.prune": PRUNERS,
}


def task(name: str) -> Task | None:
    """The task a pipeline run knows by `name` (a data step included), or None."""
    if name in STEPS:
        return Task(STEPS[name].at, ("data",), {"params": "data.steps"})
    return TASKS.get(name)


def task_names() -> tuple[str, ...]:
    """Every task name, the data steps after `expect`, as a run reaches them."""
    names = list(TASKS)
    at = names.index("expect") + 1
    return (*names[:at], *STEPS, *names[at:])


def union(registry: dict[str, Entry]) -> Any:
    """The discriminated union (on `type`) of a registry's params models."""
    members = tuple(dict.fromkeys(entry.params for entry in registry.values()))
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 (a runtime tuple)
