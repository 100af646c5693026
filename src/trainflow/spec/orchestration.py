"""The runner and orchestration sections: where CV folds (and data steps) run, per-step
timeouts and retries."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainflow import registry
from trainflow.errors import did_you_mean
from trainflow.spec.base import Section

# Every Prefect task of a pipeline run, by task name, from the registry's table of tasks.
TASK_NAMES = registry.task_names()
# The tasks that train a model (and so occupy a device): they carry the device tag.
TRAINING_TASKS = tuple(name for name, task in registry.TASKS.items() if task.trains)
# ray://host[:port] (Ray Client, port 10001 by default) or host:port (the head's GCS)
RAY_ADDRESS = re.compile(r"^(ray://[A-Za-z0-9.\-]+(:\d{1,5})?|[A-Za-z0-9.\-]+:\d{1,5})$")


class RunnerSpec(Section):
    """Where the cross-validation folds and search trials run: a one-worker thread pool in the
    flow's process (`thread`), a Dask cluster (`dask`: the scheduler at `address`, or a
    LocalCluster of `workers` single-threaded processes when no address is given), or Ray
    (`ray`: the cluster at `address`, or a local Ray of `workers` CPUs, one task per CPU).
    `data: true` sends the data preparation steps (ingest to shard) to the Dask cluster too,
    where the CPUs are; training stays in the flow's process, where the device is."""

    type: Literal["thread", "dask", "ray"] = "thread"
    address: str | None = Field(
        None,
        description="Dask scheduler (tcp://10.0.0.5:8786) or Ray cluster (ray://10.0.0.5:10001,"
        " or the head's host:port, 10.0.0.5:6379)",
    )
    workers: int = Field(
        2, ge=1, le=256, description="Local worker processes (Dask LocalCluster, local Ray's CPUs)"
    )
    data: bool = Field(
        False,
        description="Run the data steps (ingest, the data.steps, shard) on the Dask cluster "
        "too, not only the folds; their artifacts and cache keys are the in-process run's",
    )

    @model_validator(mode="after")
    def _data_on_dask(self):
        if self.data and self.type != "dask":
            raise ValueError(
                f"data: true sends the data steps to a Dask cluster, but type is "
                f"{self.type!r}: set type: dask (Ray takes folds and trials only) or remove data"
            )
        return self

    @model_validator(mode="after")
    def _address_fits_the_type(self):
        if self.address is None:
            return self
        if self.type == "thread":
            raise ValueError(
                "address is a Dask scheduler address: set type: dask (or type: ray for a Ray "
                "cluster) or remove it"
            )
        if self.type == "dask" and not self.address.startswith(
            ("tcp://", "tls://", "ucx://", "inproc://")
        ):
            raise ValueError(
                f"address must be a Dask scheduler URL (tcp://host:port, tls://...),"
                f" got {self.address!r}"
            )
        if self.type == "ray" and not RAY_ADDRESS.match(self.address):
            raise ValueError(
                f"address must be a Ray cluster address (ray://host:port for Ray Client, or "
                f"the head node's host:port), got {self.address!r}"
            )
        return self


class StepOrchestration(Section):
    """Prefect options of one step: a timeout, and retries (only I/O errors are retried)."""

    timeout_s: float | None = Field(None, gt=0, description="Fail the step after this long")
    retries: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Default: 2 for ingest and shard (reading and writing files), 0 for the others",
    )
    retry_delay_s: list[float] | None = Field(
        None, min_length=1, description="Seconds before each retry"
    )

    @field_validator("retry_delay_s")
    @classmethod
    def _non_negative(cls, value):
        if value is not None and any(v < 0 for v in value):
            raise ValueError("retry delays are seconds >= 0")
        return value


class OrchestrationSpec(Section):
    steps: dict[str, StepOrchestration] = Field(
        default_factory=dict,
        description="Task name -> timeout/retries, e.g. {train: {timeout_s: 3600}}",
    )
    device_tag: str = Field(
        "trainflow-device",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Tag on the training tasks; `trainflow serve --max-trainings N` limits how "
        "many tasks with this tag run at once",
    )

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, value):
        unknown = [name for name in value if name not in TASK_NAMES]
        if unknown:
            raise ValueError(
                f"unknown step(s) {', '.join(map(repr, unknown))}"
                f"{did_you_mean(unknown[0], TASK_NAMES)} (steps: "
                f"{', '.join(TASK_NAMES)})"
            )
        return value
