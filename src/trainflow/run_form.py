"""The run form a training deployment shows in the Prefect UI (its parameter schema).

Prefect derives the form from the flow's signature, where every knob is `int | None`: the UI
then shows each as "Property is type 'None'" until a type is clicked, with a bare path for a
description and no default. Each deployment gets its own schema instead: typed fields whose
default is its pipeline's own value (as the spec file says when the deployment is built),
the spec's limits as constraints (the form, and the server, refuse `epochs: 0` before a run
exists), one line of description, and the pipeline fixed to the deployment's own: a
deployment named digits_cnn runs digits_cnn and nothing else.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# run-form knob -> (the spec class holding it, the field, what it does)
KNOBS: dict[str, tuple[str, str, str]] = {
    "epochs": ("train", "epochs", "passes over the training rows"),
    "lr": ("train", "lr", "the learning rate: the optimizer's step size"),
    "batch_size": ("train", "batch_size", "rows per optimizer step"),
    "cv_folds": ("evaluate.cv", "folds", "cross-validation folds"),
}
LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _owner(section: str) -> type[BaseModel]:
    from trainflow.spec.after_training import CVSpec
    from trainflow.spec.train import TrainSpec

    return TrainSpec if section == "train" else CVSpec


def _value(spec: Any, section: str, field: str) -> Any:
    """The pipeline's own value of a knob (None where its section is off: no CV)."""
    node = spec
    for key in (*section.split("."), field):
        node = getattr(node, key, None)
        if node is None:
            return None
    return node


def form_schema(schema: dict, name: str, spec: Any | None) -> dict:
    """`schema` (Prefect's, from the flow's signature) made the form of pipeline `name`'s
    deployment; `spec` gives the defaults (None: the spec file is not where this process
    looks, as when `trainflow deploy` registers for a worker elsewhere: no defaults then)."""
    properties = dict(schema["properties"])
    for knob, (section, field, text) in KNOBS.items():
        if knob not in properties:  # (the scoring flow has none of them)
            continue
        limits = _owner(section).model_json_schema()["properties"][field]
        value = _value(spec, section, field) if spec is not None else None
        own = (
            "as the pipeline says"
            if spec is None
            else f"this pipeline: {value}"
            if value is not None
            else "off in this pipeline"
        )
        properties[knob] = {
            "title": knob,
            "type": limits["type"],
            **{k: limits[k] for k in LIMITS if k in limits},
            "description": f"{text} ({section}.{field}; {own})",
            "position": properties[knob]["position"],
            **({"default": value} if value is not None else {}),
        }
    properties["pipeline"] = {
        **properties["pipeline"],
        "description": f"the pipeline this deployment runs (pipelines/{name}.yaml)",
        "enum": [name],
        "default": name,
        "readOnly": True,
    }
    if "overrides" in properties:
        properties["overrides"] = {  # a list (not "list or None": no type to pick first)
            "title": "overrides",
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "position": properties["overrides"]["position"],
            "description": "any other spec value as key.path=value, e.g. "
            "train.optimizer.type=sgd (numbers, switches and choices only)",
        }
    return {**schema, "properties": properties}
