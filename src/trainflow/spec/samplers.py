"""Params of a search's samplers and pruners (registry.SEARCH_SAMPLERS, SEARCH_PRUNERS).

Each names an Optuna sampler or pruner and the few knobs a small study needs; trainflow.study
builds the Optuna object from it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from trainflow.spec.base import Section

SEED = Field(
    None,
    ge=0,
    lt=2**32,
    description="the sampler's seed (default: the pipeline's seed); trial n draws with seed + n",
)
STARTUP = Field(
    10, ge=0, le=10_000, description="trials drawn at random before the model of the space"
)


class GridParams(Section):
    """Every point of the space's grid (float ranges need a `step`), in a seeded order."""

    type: Literal["grid"] = "grid"
    seed: int | None = SEED


class RandomParams(Section):
    type: Literal["random"] = "random"
    seed: int | None = SEED


class TPEParams(Section):
    """Tree-structured Parzen estimator (Optuna's default Bayesian sampler)."""

    type: Literal["tpe"] = "tpe"
    seed: int | None = SEED
    n_startup_trials: int = STARTUP


class CmaEsParams(Section):
    """CMA-ES over the float and int parameters (categorical ones are drawn at random)."""

    type: Literal["cmaes"] = "cmaes"
    seed: int | None = SEED
    n_startup_trials: int = Field(1, ge=0, le=10_000)


class GPParams(Section):
    """Gaussian-process Bayesian optimization (Optuna's GPSampler, on torch and scipy)."""

    type: Literal["gp"] = "gp"
    seed: int | None = SEED
    n_startup_trials: int = STARTUP


class MedianParams(Section):
    """Prune a trial whose value at a step is worse than the median of earlier trials'."""

    type: Literal["median"] = "median"
    n_startup_trials: int = Field(
        5, ge=0, le=10_000, description="finished trials before any trial is pruned"
    )
    n_warmup_steps: int = Field(
        0, ge=0, le=10**9, description="epochs (of the first fold) before a trial may be pruned"
    )


class SuccessiveHalvingParams(Section):
    """Asynchronous successive halving: rungs at min_resource * reduction_factor**k epochs."""

    type: Literal["successive_halving"] = "successive_halving"
    min_resource: int = Field(1, ge=1, le=10**9)
    reduction_factor: int = Field(3, ge=2, le=100)


class HyperbandParams(Section):
    """Hyperband: several successive-halving brackets, from min_resource to max_resource."""

    type: Literal["hyperband"] = "hyperband"
    min_resource: int = Field(1, ge=1, le=10**9)
    max_resource: Annotated[int, Field(ge=1, le=10**9)] | Literal["auto"] = Field(
        "auto", description="epochs a full trial trains (all its folds); auto: learned"
    )
    reduction_factor: int = Field(3, ge=2, le=100)
