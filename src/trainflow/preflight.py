"""Checks on the data that a spec can make before any task runs."""

from __future__ import annotations

from collections import Counter

from trainflow.errors import DataError
from trainflow.spec.pipeline import PipelineSpec
from trainflow.engine.checks import check_model_and_training
from trainflow.tasks.ingest import FileSource, SequenceSource, check_declared_types, read_labels


def check_data(spec: PipelineSpec) -> None:
    """Raise DataError when the source, its target or its class counts cannot work, and
    TrainflowError when the model and training knobs cannot work together."""
    source = spec.data.source
    shape = [source.length, source.channels] if isinstance(source, SequenceSource) else None
    aux = (source.aux_targets if isinstance(source, FileSource)
           else ["amplitude"] if isinstance(source, SequenceSource) and source.aux else [])
    check_model_and_training(spec.model, spec.train, shape, dict.fromkeys(aux, []))
    if isinstance(spec.data.source, FileSource):
        check_declared_types(spec.data.source)
    target, labels = read_labels(spec.data.source)
    counts = Counter(v for v in labels if v is not None)
    if len(counts) < 2:
        raise DataError(f"target {target!r} has a single class {sorted(counts)} in "
                        f"{len(labels)} rows: a stratified split needs at least two classes")
    if spec.evaluate.cv:
        folds = spec.evaluate.cv.folds
        keep = 1 - spec.data.split.test
        scarce = {c: n for c, n in counts.items() if int(n * keep) < folds}
        if scarce:
            raise DataError(
                f"evaluate.cv.folds is {folds} but class(es) {scarce} of {target!r} have too few "
                f"rows: about {keep:.0%} of each class remains for cross-validation after the "
                f"test split; lower evaluate.cv.folds or add data")
