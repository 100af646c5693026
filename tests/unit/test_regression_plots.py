"""A regression's test plots (issue 19, part 7): predicted against actual with the y = x
line, and the residuals against the predictions, as PNGs the report embeds."""

from __future__ import annotations

import io

import numpy as np

from trainflow.plots import PREDICTED_VS_ACTUAL, RESIDUALS, regression_pngs


def pixels(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def test_both_plots_are_pngs_that_move_with_the_predictions():
    rng = np.random.default_rng(0)
    actual = rng.normal(150.0, 60.0, 80)
    good = regression_pngs(actual, actual + rng.normal(0, 5.0, 80))
    assert set(good) == {PREDICTED_VS_ACTUAL, RESIDUALS}
    for png in good.values():
        assert png.startswith(b"\x89PNG") and pixels(png).shape[:2] == (400, 450)
    biased = regression_pngs(actual, actual * 0.5 + 40.0)
    for name in good:  # another model, other points
        assert not np.array_equal(pixels(good[name]), pixels(biased[name]))
    assert regression_pngs(actual, actual * 0.5 + 40.0) == biased  # the same bytes again
