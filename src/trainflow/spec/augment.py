"""Augmentation section: albumentations transforms by name, checked against their signatures."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import Field, model_validator

from trainflow.errors import did_you_mean
from trainflow.spec.base import Section


class TransformSpec(Section):
    """One albumentations transform: `name` is its class (e.g. Erasing, CoarseDropout, Affine),
    `params` its keyword arguments."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exists_with_these_params(self):
        import albumentations as A

        cls = getattr(A, self.name, None)
        if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)) or issubclass(
            cls, A.BaseCompose if hasattr(A, "BaseCompose") else ()
        ):
            names = [
                n
                for n, c in vars(A).items()
                if inspect.isclass(c) and issubclass(c, A.BasicTransform)
            ]
            raise ValueError(
                f"{self.name!r} is not an albumentations transform"
                f"{did_you_mean(self.name, names)} (for example Erasing, "
                "CoarseDropout, HorizontalFlip, Affine, GaussNoise)"
            )
        accepted = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "args", "kwargs")
        ]
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter(s) {unknown}"
                f"{did_you_mean(unknown[0], accepted)}; it takes {accepted}"
            )
        try:
            cls(**self.params)
        except Exception as exc:  # albumentations validates with pydantic and plain checks
            lines = [
                line.strip()
                for line in str(exc).splitlines()
                if line.strip() and "errors.pydantic.dev" not in line
            ]
            detail = "; ".join(lines[1:3] if len(lines) > 1 else lines)
            raise ValueError(f"{self.name}({self.params}): {detail}") from None
        return self


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
