"""The ensemble kinds: how members' class probabilities combine (`combine_*`, which the
ensemble task and a model package's prediction both call, so they agree) and how the
weighted and stacking kinds fit their combination on out-of-fold predictions.

A member is a cross-validated model configuration (the spec, one of its variants, or a
study's trial): its fold models' test probabilities, and its out-of-fold probabilities, each
train+val row predicted by the fold model that held it out. A state is JSON: the member of
each fold model (`groups`), and the fitted weights or the meta-model's coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EPS = 1e-7  # probabilities are clipped here before a log (a hard vote's zeros)


def member_means(probs: Sequence[np.ndarray], groups: Sequence[int]) -> list[np.ndarray]:
    """Each member's test probabilities: the mean over its fold models."""
    out = []
    for member in range(max(groups) + 1):
        chosen = [p for p, g in zip(probs, groups) if g == member]
        out.append(np.asarray(np.mean(np.stack(chosen), axis=0, dtype=np.float64)))
    return out


def combine_soft_vote(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """The mean of the fold models' class probabilities."""
    return np.asarray(np.mean(np.stack(probs), axis=0, dtype=np.float64), dtype=np.float32)


def combine_mean(preds: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """The mean of a regression's fold models' predictions, in the target's units, in
    float64 (a target's large numbers keep their digits)."""
    return np.asarray(np.mean(np.stack(preds), axis=0, dtype=np.float64))


def combine_hard_vote(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """Each fold model's class as one vote; the vote shares (the argmax's tie goes to the
    lowest class index)."""
    stacked = np.stack(probs)
    votes = np.eye(stacked.shape[2], dtype=np.float64)[stacked.argmax(axis=2)]
    return votes.mean(axis=0).astype(np.float32)


def combine_weighted(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """Σ weight × member mean."""
    assert state is not None
    means = member_means(probs, state["groups"])
    mixed = sum(w * m for w, m in zip(state["weights"], means))
    return np.asarray(mixed, dtype=np.float32)


def combine_stacking(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """The meta-model (multinomial logistic regression) on the members' mean probabilities,
    applied with its saved coefficients (no pickled estimator)."""
    assert state is not None
    features = np.concatenate(member_means(probs, state["groups"]), axis=1)
    return meta_probabilities(features, state["coef"], state["intercept"])


def combine_one(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """A model soup is one network: its probabilities as they are."""
    return np.asarray(probs[0], dtype=np.float32)


def meta_probabilities(features: np.ndarray, coef: list, intercept: list) -> np.ndarray:
    """scikit-learn's LogisticRegression.predict_proba from its coef_ and intercept_."""
    scores = features.astype(np.float64) @ np.asarray(coef, np.float64).T
    scores += np.asarray(intercept, np.float64)
    if scores.shape[1] == 1:  # binary: one score for the second class
        scores = np.concatenate([np.zeros_like(scores), scores], axis=1)
    scores -= scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0)
    return float(-np.log(picked).mean())


def fit_weights(oof: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Non-negative weights summing to 1 minimizing the out-of-fold log loss (SLSQP from the
    uniform weights); the uniform ones are kept if the optimizer found nothing better."""
    from scipy.optimize import minimize

    count = len(oof)
    uniform = np.full(count, 1.0 / count)
    picked = np.stack([np.asarray(o, np.float64)[np.arange(len(labels)), labels] for o in oof])

    def loss(w: np.ndarray) -> float:
        return float(-np.log(np.clip(w @ picked, EPS, None)).mean())

    found = minimize(
        loss,
        uniform,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * count,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
    )
    weights = np.clip(found.x, 0.0, None)
    weights = weights / weights.sum()
    if loss(weights) > loss(uniform):
        weights = uniform
    return {
        "weights": [float(w) for w in weights],
        "oof_log_loss": loss(weights),
        "uniform_oof_log_loss": loss(uniform),
    }


def fit_stacking(oof: Sequence[np.ndarray], labels: np.ndarray, c: float) -> dict[str, Any]:
    """The meta-model fitted on the members' out-of-fold probabilities (train+val rows
    only), saved as its coefficients."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([np.asarray(o, np.float64) for o in oof], axis=1)
    meta = LogisticRegression(C=c, max_iter=2000)
    meta.fit(features, labels)
    return {
        "coef": meta.coef_.tolist(),
        "intercept": meta.intercept_.tolist(),
        "classes": [int(c) for c in meta.classes_],
        "oof_log_loss": log_loss(
            meta_probabilities(features, meta.coef_.tolist(), meta.intercept_.tolist()), labels
        ),
    }


def combine_chosen(probs: Sequence[np.ndarray], state: dict | None = None) -> np.ndarray:
    """top_k_trials: the trials' fold models combined as its `combine` chose (the state's
    kind)."""
    assert state is not None
    kinds = {
        "soft_vote": combine_soft_vote,
        "weighted": combine_weighted,
        "stacking": combine_stacking,
    }
    return kinds[state["kind"]](probs, state)
