"""Model packages: a trained model and all that prediction needs, as one verified folder.

A package is a folder (in the store: `package/<fingerprint>`) holding

    manifest.json         the package format and the sha256 of every other file
    package.json          what the package is (PackageInfo): input schema, label map, fitted
                          data steps, members, metrics, library versions, where it came from
    spec.json             the pipeline spec the model was trained with
    members/<i>/model.json, members/<i>/best.pt
                          each network's architecture and weights (one member, or the fold
                          models of an ensemble); weights load with torch's weights_only

Loading checks the manifest first: a folder without one, a format newer than this trainflow
reads, a file whose sha256 differs, each is an ArtifactError naming the file. Nothing is
unpickled: the state is JSON, the weights load through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from trainflow.artifacts import ArtifactRef, Store, sha256_file
from trainflow.errors import ArtifactError

FORMAT = 1  # the package format this trainflow writes and the newest it reads
MANIFEST = "manifest.json"
INFO = "package.json"
SPEC = "spec.json"
MODEL_FILES = ("model.json", "best.pt")  # a member's folder, as engine.training builds it
Kind = Literal["model", "fold", "ensemble", "quantize", "prune", "distill"]

# The column types a package records for its input, by polars' name for them.
DTYPES: dict[str, Any] = {
    str(t): t
    for t in (
        pl.Float32,
        pl.Float64,
        pl.Int8,
        pl.Int16,
        pl.Int32,
        pl.Int64,
        pl.UInt8,
        pl.UInt16,
        pl.UInt32,
        pl.UInt64,
        pl.Boolean,
        pl.String,
        pl.Date,
        pl.Datetime("ms"),
        pl.Datetime("us"),
        pl.Datetime("ns"),
        pl.List(pl.Float32),
        pl.List(pl.Float64),
    )
}

# How rows pass each data step at prediction: the function of the step's module
# (trainflow.transforms.<type>) that applies it, its own `apply` or its `apply_at_prediction` (the
# same, keeping every row: each input row gets a prediction), and the entries of its fitted
# state that prediction reads (None: all). Named, not imported: loading a package imports only
# the steps it holds. A step named neither here nor in tasks/package.py TRAINING_ONLY cannot be
# packaged: tests/unit/test_package.py checks that every registered step is.
PREDICTION_MODES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "clean": ("apply_at_prediction", ("fill",)),
    "encode": ("apply", ("categories",)),
    "normalize": ("apply", None),
    "outliers": ("apply_at_prediction", ("bounds",)),
    "anomalies": ("apply_at_prediction", ("bounds",)),  # not its sample of rows
    "smooth": ("apply", ()),
}


def prediction_mode(step_type: str) -> Callable:
    """The function that applies a data step to rows at prediction (see PREDICTION_MODES)."""
    module = importlib.import_module(f"trainflow.transforms.{step_type}")
    return getattr(module, PREDICTION_MODES[step_type][0])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PackageStep(_Strict):
    """One fitted data step as rows pass it at prediction (its params and learned state)."""

    type: str
    params: dict[str, Any]
    state: dict[str, Any]


class Member(_Strict):
    """One network and the post-split steps fitted for it (a fold model has its own)."""

    folder: str
    steps: list[PackageStep]


class InputSchema(_Strict):
    """What rows to score must hold: the columns as ingest read them at training."""

    source: str  # the training source's type (csv, parquet, sklearn, image_folder, ...)
    columns: dict[str, str]  # column -> polars type, in order: what the steps and model read
    keep_columns: list[str]  # id columns carried to the predictions when present
    categories: dict[str, list[str]]  # text column -> the categories training saw
    unknown: dict[str, Literal["ignore", "error"]]  # text column -> unseen-category policy
    image_shape: list[int] | None = None  # (channels, height, width)
    sequence_shape: list[int] | None = None  # (steps, channels)
    target: str  # the predicted column (the main target of a multi-task model)


class Decision(_Strict):
    """How prediction turns the network's logits into probabilities and a class, as the
    evaluate task did: divided by `temperature` (evaluate.calibrate) before the softmax;
    with a `threshold` (evaluate.threshold, a binary model), class `positive` where its
    probability is at least the threshold, else the other class."""

    temperature: float = 1.0
    threshold: float | None = None
    positive: int | None = None


class PackageInfo(_Strict):
    format: int
    kind: Kind
    pipeline: str
    spec_fingerprint: str
    classes: list[str]
    input: InputSchema
    table_schema: dict[str, Any]  # the ingested rows' TableSchema
    steps: list[PackageStep]  # pre-split steps, shared by every member
    members: list[Member]
    combine: str | None = None  # how members' probabilities combine (an ensemble's rule)
    decision: Decision | None = None  # the trained model's calibration and threshold
    combine_state: dict[str, Any] = {}  # what it fitted (trainflow.ensembles; JSON, no pickle)
    training_only: list[str]  # steps the rows skip at prediction, as the test rows did
    metrics: dict[str, Any]
    libraries: dict[str, str]
    made_from: dict[str, Any]
    # The ingested data's feature profile (trainflow.drift), for the score flow's drift
    # table; empty in a package made before trainflow profiled (no drift table then).
    profile: dict[str, Any] = {}


@dataclass(frozen=True)
class Package:
    """A verified package: its folder, what it holds, and the spec it was trained with."""

    path: Path
    info: PackageInfo
    spec: dict[str, Any]

    def member_folder(self, member: Member) -> Path:
        return self.path / member.folder


def write_package(
    store: Store, info: PackageInfo, model_folders: list[Path], spec: dict[str, Any]
) -> ArtifactRef:
    """Copy each member's model.json and weights, write the package's JSON and the manifest
    of sha256s, and commit the folder to the store (atomically, like every artifact)."""
    if len(model_folders) != len(info.members):
        raise ValueError("one model folder per member")
    with store.writer("package") as staging:
        for member, folder in zip(info.members, model_folders):
            (staging / member.folder).mkdir(parents=True)
            for name in MODEL_FILES:
                shutil.copyfile(Path(folder) / name, staging / member.folder / name)
        (staging / INFO).write_text(info.model_dump_json(indent=1))
        (staging / SPEC).write_text(json.dumps(spec, indent=1, sort_keys=True))
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        (staging / MANIFEST).write_text(
            json.dumps({"trainflow_package": FORMAT, "files": files}, indent=1, sort_keys=True)
        )
        return store.commit(
            staging,
            "package",
            count=len(info.members),
            schema=info.input.model_dump(),
            meta={
                "kind": info.kind,
                "pipeline": info.pipeline,
                "classes": info.classes,
                "members": len(info.members),
            },
        )


def load_package(path: str | Path) -> Package:
    """The package in `path`, after checking every file against its manifest."""
    root = Path(path)
    if not root.exists():
        raise ArtifactError(
            f"model package {root} not found: pass the package folder that "
            '`trainflow run` printed as "package"'
        )
    if not root.is_dir():
        raise ArtifactError(
            f"{root} is a file, not a trainflow model package (a package is "
            f"a folder holding {MANIFEST}; `trainflow run` prints its path)"
        )
    files = _verified_files(root)
    for name in (INFO, SPEC):
        if name not in files:
            raise ArtifactError(
                f"{root / MANIFEST} does not list {name}: this is not a "
                "complete trainflow model package"
            )
    info = _read_model(root / INFO, PackageInfo)
    if info.format > FORMAT:
        raise _newer(root / INFO, info.format)
    for member in info.members:
        for name in MODEL_FILES:
            if f"{member.folder}/{name}" not in files:
                raise ArtifactError(
                    f"{root / MANIFEST} does not list {member.folder}/{name}, "
                    f"which {INFO} names: the package is incomplete"
                )
    return Package(root, info, _read_json(root / SPEC))


def _verified_files(root: Path) -> set[str]:
    """The files the manifest lists, each present with its recorded sha256."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(
            f"{root} is not a trainflow model package: it has no {MANIFEST} "
            '(a package is the folder `trainflow run` prints as "package", '
            "in the store's package/ folder)"
        )
    raw = _read_json(manifest)
    version = raw.get("trainflow_package")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(
            f"{manifest} is not a trainflow package manifest (no trainflow_package format number)"
        )
    if version > FORMAT:
        raise _newer(manifest, version)
    listed = raw.get("files")
    if not isinstance(listed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in listed.items()
    ):
        raise ArtifactError(f"{manifest}: 'files' is not a mapping of file name to sha256")
    for name, digest in sorted(listed.items()):
        file = _inside(root, name, manifest)
        if not file.is_file():
            raise ArtifactError(
                f"{file}, listed in {manifest}, is missing: the package is "
                "incomplete; rerun the pipeline to make it again"
            )
        if sha256_file(file) != digest:
            raise ArtifactError(
                f"{file} was altered or damaged: its sha256 differs from the "
                f"one in {manifest}; do not use this package (rerun the "
                "pipeline to make it again)"
            )
    return set(listed)


def _inside(root: Path, name: str, manifest: Path) -> Path:
    """`root / name`, refusing a name that would reach outside the package folder."""
    parts = PurePosixPath(name).parts
    file = root.joinpath(*parts) if parts else root
    if (
        not parts
        or PurePosixPath(name).is_absolute()
        or ".." in parts
        or not file.resolve().is_relative_to(root.resolve())
    ):
        raise ArtifactError(
            f"{manifest} lists {name!r}, which is not a file inside the package folder"
        )
    return file


def _newer(file: Path, version: int) -> ArtifactError:
    return ArtifactError(
        f"{file}: the package has format {version}, newer than this trainflow "
        f"reads (format {FORMAT}): it was made by a newer trainflow; upgrade "
        "trainflow (pip install -U trainflow) to load it"
    )


def _read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{file} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{file} holds {type(value).__name__}, not a JSON object")
    return value


def _read_model(file: Path, model: type[BaseModel]) -> Any:
    raw = _read_json(file)
    if isinstance(raw.get("format"), int) and raw["format"] > FORMAT:
        raise _newer(file, raw["format"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArtifactError(
            f"{file} is not a trainflow package description: {where}: {first['msg']}"
        ) from None


def dtype(name: str, where: str) -> pl.DataType:
    """The polars type a package names for a column."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ArtifactError(
            f"{where}: column type {name!r} is not one a package holds ({', '.join(DTYPES)})"
        ) from None
