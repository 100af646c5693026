"""Ensemble section: how the cross-validation fold models (of the spec and of its variants,
or of a study's best trials) combine into one model (trainflow.ensembles does it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, ValidationError, field_validator

from trainflow.spec.base import Section
from trainflow.spec.task import declared_task

VARIANT_SECTIONS = ("model", "train")  # what a variant may change: not the data or the folds


class VotingParams(Section):
    variants: list[dict[str, Any]] = Field(
        default_factory=list,
        description="more members: each a set of `model.*` / `train.*` values (dotted paths, "
        "as --set takes them) cross-validated on the same folds; the spec itself is the first "
        "member",
    )

    @field_validator("variants")
    @classmethod
    def _model_and_train_only(cls, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, variant in enumerate(variants):
            if not variant:
                raise ValueError(f"variants.{index} is empty: give it model.* or train.* values")
            for path in variant:
                if path.split(".")[0] not in VARIANT_SECTIONS:
                    raise ValueError(
                        f"variants.{index}: {path!r} is not under model or train; a variant "
                        "is cross-validated on the spec's folds and data steps, so it may "
                        "change model.* and train.* values only"
                    )
        return variants


class HardVoteParams(VotingParams):
    """Majority vote of the fold models' predicted classes (ties: the lowest class index);
    the probabilities are the vote shares."""

    type: Literal["hard_vote"]


class SoftVoteParams(VotingParams):
    """Average the class probabilities of the cross-validation fold models."""

    type: Literal["soft_vote"]


class MeanParams(VotingParams):
    """Average a regression's fold models' predictions, in the target's own units (a
    classifier's fold models average their class probabilities with soft_vote)."""

    type: Literal["mean"]


class WeightedParams(VotingParams):
    """Non-negative member weights summing to 1 that minimize the log loss of the members'
    out-of-fold predictions (scipy's SLSQP); a member's test probabilities are its fold
    models' mean. Needs variants: one member has the weight 1."""

    type: Literal["weighted"]


class StackingParams(VotingParams):
    """A multinomial logistic regression (scikit-learn) on the members' out-of-fold
    probabilities, applied to their fold models' mean test probabilities: fitted only on
    train+val rows, each predicted by a fold model that never trained on it."""

    type: Literal["stacking"]
    C: float = Field(1.0, gt=0, description="inverse L2 regularization strength")


class SoupParams(Section):
    """A greedy model soup of the fold models (one architecture): the ingredients in order of
    their validation loss; the next one's weights join the average only if the soup's loss
    on that ingredient's held-out fold (rows it never trained on) goes down."""

    type: Literal["soup"]


class TopKTrialsParams(Section):
    """The k best trials of the spec's study (its search section), each cross-validated, and
    combined as `combine` says."""

    type: Literal["top_k_trials"]
    k: PositiveInt = Field(3, le=50)
    combine: Literal["soft_vote", "weighted", "stacking"] = "soft_vote"


def variant_raw(spec: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """A spec dump with a variant's dotted-path values set and no ensemble (a member is
    cross-validated, not ensembled again)."""
    raw = {**spec, "ensemble": None}
    for path, value in variant.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[last] = value
    return raw


def variant_specs(spec: Any) -> list[Any]:
    """The spec of each of `spec.ensemble`'s variants (ValueError naming the variant)."""
    variants = getattr(spec.ensemble, "variants", [])
    dumped = spec.model_dump(mode="json")
    out = []
    for index, variant in enumerate(variants):
        try:
            out.append(type(spec).model_validate(variant_raw(dumped, variant)))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"ensemble.variants.{index}: {where}: {first['msg']}") from None
    return out


REGRESSION_KINDS = ("mean",)  # the kinds that combine numbers rather than class probabilities


def regression_refusal(kind: str) -> str | None:
    """Why ensemble type `kind` cannot combine a regression's models (None: it can)."""
    if kind in REGRESSION_KINDS:
        return None
    why = {
        "hard_vote": "votes for classes",
        "soft_vote": "averages class probabilities",
        "weighted": "fits member weights on the log loss of class probabilities",
        "stacking": "fits a logistic regression on class probabilities",
        "soup": "picks its ingredients by their validation log loss",
        "top_k_trials": "combines its trials as soft_vote, weighted or stacking",
    }.get(kind, "is a classification ensemble")
    return (
        f"ensemble.type {kind} {why}, and this pipeline's target is a regression's number: "
        "use ensemble.type mean (the fold models' predictions averaged, in the target's units)"
    )


def check_ensemble(spec: Any) -> None:
    """What the ensemble section needs of the rest of the spec (ValueError): a study for
    top_k_trials, variants that validate."""
    if spec.ensemble is None:
        return
    if spec.ensemble.type == "top_k_trials" and getattr(spec, "search", None) is None:
        raise ValueError(
            "ensemble.type top_k_trials combines the k best trials of a study, and this "
            "spec has no search section: add one (the trials' space), or use soft_vote, "
            "weighted or stacking (with ensemble.variants for more members)"
        )
    # declared, or a scikit-learn dataset's own; a task the data decides: preflight's
    for _, message in ensemble_problems(spec, declared_task(spec) or "auto"):
        raise ValueError(message)
    variant_specs(spec)


def ensemble_problems(spec: Any, task: str) -> list[tuple[str, str]]:
    """(YAML path, message) where the ensemble section cannot combine a `task`'s models
    (spec.task's task_problems and preflight ask, once the task is known)."""
    if spec.ensemble is None or task not in ("classification", "regression"):
        return []
    refusal = (
        regression_refusal(spec.ensemble.type)
        if task == "regression"
        else classification_refusal(spec.ensemble.type)
    )
    return [("ensemble.type", refusal)] if refusal else []


def classification_refusal(kind: str) -> str | None:
    """Why ensemble type `kind` cannot combine a classifier's models (None: it can)."""
    if kind not in REGRESSION_KINDS:
        return None
    return (
        f"ensemble.type {kind} averages a regression's predicted numbers, and this "
        "pipeline's target holds class labels: use soft_vote (the mean of the fold models' "
        "class probabilities), hard_vote, weighted, stacking or soup"
    )
