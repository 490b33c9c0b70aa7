"""The patient's size read from the labelled spine, and the views' scale it sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vertedge.labels import LABELS
from vertedge.options import SizeOptions
from vertedge.patient_size import apparent_size, level_gap_mm, rescaled_kept, view_scale
from vertedge.phantom.params import PhantomParams
from vertedge.phantom.spine import build_spine


def phantom_spine(seed: int) -> tuple[PhantomParams, np.ndarray, np.ndarray]:
    """A phantom's drawing parameters, its vertebrae's labels (n,) and body centres (n, 3) world LPS mm."""
    prm = PhantomParams.draw(np.random.default_rng(seed), None, None)
    spine = build_spine(prm)
    return prm, np.array([lv.label for lv in spine.vertebrae]), np.array([lv.center for lv in spine.vertebrae])


@pytest.mark.parametrize("seed", range(1000, 1012))
def test_the_size_read_from_a_phantom_spine_is_its_stature(seed: int):
    """The phantom's vertebrae, curved as drawn, read at their stature within 1.5 %, in any order."""
    prm, labels, points = phantom_spine(seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    size, pairs = apparent_size(labels[order], points[order])
    assert size == pytest.approx(prm.stature, rel=0.015)
    assert pairs >= 20  # C2-L5 without the optional levels' pairs


def test_labels_one_level_off_move_the_size_by_a_few_per_cent():
    """What the views' scale stands on does not hang on the labels being right: the thoracic and
    lumbar vertebrae named one level too high or too low read within 7 % of the right size."""
    for seed in range(1000, 1006):
        prm, labels, points = phantom_spine(seed)
        keep = (labels >= LABELS["T1"]) & (labels <= LABELS["L4"])
        for shift in (-1, 1):
            size, _ = apparent_size(labels[keep] + shift, points[keep])
            assert size == pytest.approx(prm.stature, rel=0.07)
            assert size != pytest.approx(prm.stature, rel=0.02)  # the reference does differ by level


def test_only_neighbouring_levels_of_the_table_are_read():
    """A gap in the labels, C1 and the optional T13 and L6 give no pair; the gap grows down the spine
    from C3."""
    points = np.cumsum(np.full((6, 3), [0.0, 0.0, -20.0]), axis=0)
    assert apparent_size(np.array([10, 12, 14, 16, 18, 22]), points) == (pytest.approx(np.nan, nan_ok=True), 0)
    assert apparent_size(np.array([1, 19, 28, 24, 25, 1]), points)[1] == 0
    t5_t6 = apparent_size(np.array([LABELS["T5"], LABELS["T6"]]), points[:2])
    assert t5_t6 == (pytest.approx(20.0 / level_gap_mm(np.array([LABELS["T5"]]))[0]), 1)
    assert np.all(np.diff(level_gap_mm(np.arange(LABELS["C3"], LABELS["L4"] + 1))) >= 0)


def test_the_views_scale_follows_a_size_far_from_the_best_and_stays_in_range():
    options = SizeOptions()
    best, tolerance = options.best, options.tolerance
    assert view_scale(best, 10, options) == 1.0
    assert view_scale(best * tolerance * 0.99, 10, options) == 1.0
    assert view_scale(best * 1.2, 10, options) == pytest.approx(1.2)
    assert view_scale(best * 2.0, 10, options) == options.scale_range[1]
    assert view_scale(best * 1.2, options.min_pairs - 1, options) == 1.0  # too few pairs to read a size
    assert view_scale(np.nan, 0, options) == 1.0
    smaller = options.min_pairs_smaller
    assert view_scale(best * 0.85, smaller, options) == pytest.approx(0.85)
    assert view_scale(best * 0.5, smaller, options) == options.scale_range[0]
    assert view_scale(best * 0.85, smaller - 1, options) == 1.0  # a smaller size needs a longer chain
    assert view_scale(best * 1.2, smaller - 1, options) == pytest.approx(1.2)
    only_larger = dataclasses.replace(options, scale_range=(1.0, 1.25))
    assert view_scale(best * 0.85, smaller, only_larger) == 1.0
    assert view_scale(best * 1.2, 10, dataclasses.replace(options, enabled=False)) == 1.0
    with pytest.raises(ValueError):
        SizeOptions(scale_range=(1.1, 1.25))


def test_labels_read_at_the_new_scale_are_kept_only_for_the_same_spine():
    """The new labels replace the first where they read the same size from enough pairs and hold
    at least as many vertebrae; a chain one vertebra short is read anew, unless `as_complete` is off."""
    options = SizeOptions()
    large = options.best * 1.2
    assert rescaled_kept((large, 10, 12), (large * 1.02, 10, 12), options)
    assert rescaled_kept((large, 10, 12), (large, 10, 13), options)
    assert not rescaled_kept((large, 10, 12), (large * options.tolerance * 1.05, 10, 12), options)  # another size
    assert not rescaled_kept((large, 10, 12), (large, options.min_pairs - 1, 12), options)  # too few pairs
    assert not rescaled_kept((large, 10, 12), (large, 10, 11), options)  # one vertebra lost
    assert rescaled_kept((large, 10, 12), (large, 10, 11), dataclasses.replace(options, as_complete=False))
