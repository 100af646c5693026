"""What a pipeline run made, in one shape: built once by the pipeline flow, read by the
package, report and MLflow steps (instead of the same seven parameters in each)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from trainflow.artifacts import ArtifactRef


class RunOutputs(BaseModel):
    """The run's artifacts. A task that takes one keys it on each artifact's fingerprint,
    as it would the artifacts passed one by one (trainflow.caching.canonical)."""

    model_config = ConfigDict(frozen=True)

    # prepare_data's artifacts by name (trainflow.flows.data; `steps` a list of them)
    data: dict[str, Any]
    model: ArtifactRef  # the trained model
    test: ArtifactRef  # its evaluation on the test part
    folds: list[ArtifactRef] = []  # the cross-validation fold models
    members: list[ArtifactRef] = []  # the fold models an ensemble combines (+ its variants')
    ensemble: ArtifactRef | None = None
    compressed: dict[str, ArtifactRef] = {}  # by compression: quantize, prune
