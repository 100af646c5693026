"""Augmentation section: albumentations transforms by name, checked against their signatures.

Importing albumentations imports torch (5 s and 280 MB), so the spec checks names and keyword
names against a table of the pinned release's signatures (`albumentations.json`, written from
the library itself; a test keeps the two equal) and the values, which only the library can
judge, are checked by `check_values` in the run's preflight, before any task runs.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from trainflow.errors import did_you_mean
from trainflow.spec.base import Section

TABLE = Path(__file__).with_name("albumentations.json")


def live_signatures() -> dict[str, list[str]]:
    """Each albumentations transform class -> its keyword arguments, read from the library."""
    import albumentations as A

    compose = A.BaseCompose if hasattr(A, "BaseCompose") else ()
    return {
        name: [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "args", "kwargs")
        ]
        for name, cls in sorted(vars(A).items())
        if inspect.isclass(cls)
        and issubclass(cls, A.BasicTransform)
        and not issubclass(cls, compose)
    }


@lru_cache(maxsize=1)
def signatures() -> dict[str, list[str]]:
    """The shipped table when it describes the installed release, the library's own else."""
    from importlib import metadata  # here: importing it costs a spec check ~30 ms

    table = json.loads(TABLE.read_text())
    try:
        installed = metadata.version("albumentations")
    except metadata.PackageNotFoundError:
        installed = None
    return table["transforms"] if installed == table["version"] else live_signatures()


class TransformSpec(Section):
    """One albumentations transform: `name` is its class (e.g. Erasing, CoarseDropout, Affine),
    `params` its keyword arguments."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exists_with_these_params(self):
        known = signatures()
        if self.name not in known:
            raise ValueError(
                f"{self.name!r} is not an albumentations transform"
                f"{did_you_mean(self.name, list(known))} (for example Erasing, "
                "CoarseDropout, HorizontalFlip, Affine, GaussNoise)"
            )
        accepted = known[self.name]
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter(s) {unknown}"
                f"{did_you_mean(unknown[0], accepted)}; it takes {accepted}"
            )
        return self

    def check_values(self) -> None:
        """Raise ValueError, in albumentations' words, when the library refuses the values."""
        import albumentations as A

        try:
            getattr(A, self.name)(**self.params)
        except Exception as exc:  # albumentations validates with pydantic and plain checks
            lines = [
                line.strip()
                for line in str(exc).splitlines()
                if line.strip() and "errors.pydantic.dev" not in line
            ]
            detail = "; ".join(lines[1:3] if len(lines) > 1 else lines)
            raise ValueError(f"{self.name}({self.params}): {detail}") from None


class AugmentSpec(Section):
    """Applied on the fly to training batches only, with randomness drawn from the seed, the
    epoch and the loader worker: reproducible, yet different every epoch and per worker."""

    transforms: list[TransformSpec] = Field(
        default_factory=list, description="albumentations, for image inputs"
    )
    gaussian_noise: float = Field(0.0, ge=0, description="std of noise added to tabular inputs")
    mixup: float = Field(0.0, ge=0, description="alpha of mixup's Beta(alpha, alpha); 0: off")

    def build(self) -> Any:
        """The albumentations Compose of `transforms` (None when there are none)."""
        if not self.transforms:
            return None
        import albumentations as A

        return A.Compose([getattr(A, t.name)(**t.params) for t in self.transforms])
