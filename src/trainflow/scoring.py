"""Where a `score` run reads and writes, from its (untrusted) parameters: files inside the
scoring folder only, and a model of the pipeline's own store.

A score run started from the Prefect UI names its data and its output. Both are text a UI
user types, so neither may point anywhere on the worker: they are paths relative to the
scoring folder ($TRAINFLOW_SCORING_DIR, else ./scoring in the folder the worker runs in, as
./pipelines is), and a path that leaves it (absolute, `..`, a symbolic link out) is refused.
The model is the pipeline's champion, or a package folder of the pipeline's own store.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path, PurePosixPath

from trainflow.errors import SpecError

SCORING_ENV = "TRAINFLOW_SCORING_DIR"
OUTPUTS = (".csv", ".parquet")
DATE = "{date}"  # in an output path: the run's scheduled day, so each day keeps its file
PACKAGES = "package"  # the store's folder of model packages
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")  # a store folder's name: its sha256


def scoring_dir() -> Path:
    """The folder every score run's data and predictions lie in."""
    return Path(os.environ.get(SCORING_ENV) or Path.cwd() / "scoring").resolve()


def _refused(parameter: str, message: str) -> SpecError:
    return SpecError("parameters", [(parameter, message)])


def _inside(parameter: str, value: str) -> Path:
    """`<scoring folder>/<value>`, refusing any value that would reach outside it."""
    root = scoring_dir()
    text = str(value or "").strip()
    parts = PurePosixPath(text).parts
    where = (
        f"a path relative to the scoring folder {root} (set {SCORING_ENV} to use "
        "another folder), such as breast_cancer_mlp/incoming.csv"
    )
    if not parts or PurePosixPath(text).is_absolute() or ".." in parts or "\\" in text:
        raise _refused(parameter, f"{text!r} is not {where}")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root):
        raise _refused(
            parameter,
            f"{text!r} leads outside the scoring folder {root} (a "
            f"symbolic link?): it must be {where}",
        )
    return path


def data_path(value: str) -> Path:
    """The file or folder of rows to score."""
    path = _inside("data", value)
    if not path.exists():
        raise _refused(
            "data",
            f"{path} does not exist: put the rows to score there (a .csv "
            "or .parquet file, or a folder of images), or name another "
            f"file of the scoring folder {scoring_dir()}",
        )
    return path


def output_path(value: str, day: date, data: Path | None) -> Path:
    """The predictions file, `{date}` replaced by the run's day (YYYY-MM-DD); its folder is
    created inside the scoring folder."""
    text = str(value or "").replace(DATE, day.isoformat())
    path = _inside("output", text)
    if path.suffix.lower() not in OUTPUTS:
        raise _refused(
            "output", f"{text!r}: write a .csv or .parquet file (the extension says which)"
        )
    if data is not None and path.resolve() == data.resolve():
        raise _refused("output", f"{text!r} is the data being scored: name another file")
    if path.is_dir():
        raise _refused("output", f"{path} is a folder: name a .csv or .parquet file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def package_path(store: Path, value: str) -> Path:
    """A package folder of the store (`package/<fingerprint>`, or just the fingerprint)."""
    folder = Path(store).resolve() / PACKAGES
    name = str(value or "").strip().removeprefix(f"{PACKAGES}/").rstrip("/")
    if str(folder) in name:  # the full path `trainflow run` printed
        name = name.split(f"{folder}/", 1)[-1]
    if not FINGERPRINT.match(name) or not (folder / name).is_dir():
        known = sorted(p.name for p in folder.iterdir())[:5] if folder.is_dir() else []
        raise _refused(
            "package",
            f"{value!r} is not a model package of the pipeline's store "
            f"(a folder name in {folder}, e.g. "
            f"{', '.join(known) or 'none yet'}); leave it empty to "
            "score with the pipeline's champion",
        )
    return folder / name


def locations(
    pipeline: str, data: str, output: str, package: str | None, threshold: float, day: date
) -> tuple[str, Path, Path, Path]:
    """The pipeline's name and, from a score run's parameters, the model package, the data
    and the output; every parameter problem is reported at once, before any file is read."""
    from trainflow.champion import champion_package
    from trainflow.deploy import spec_file
    from trainflow.spec.pipeline import load_spec

    spec = load_spec(spec_file(pipeline))  # a SpecError naming the pipeline parameter
    from trainflow.remote import local_folder  # an s3:// store: its local mirror

    store = local_folder(spec.outputs.store, spec.outputs.mirror)  # as runs write it
    problems: list[tuple[str, str]] = []

    def checked(check, *args):
        try:
            return check(*args)
        except SpecError as exc:
            problems.extend(exc.problems)
            return None

    source = checked(data_path, data)
    target = checked(output_path, output, day, source)
    model = checked(package_path, store, package) if package else None
    if not 0 < threshold <= 10:
        problems.append(
            (
                "drift_threshold",
                f"{threshold} is not a PSI threshold: take a "
                "number above 0, such as 0.2 (0.1 to 0.25 is usual)",
            )
        )
    if problems:
        raise SpecError("parameters", problems)
    return spec.name, model or champion_package(spec.name, store), source, target
