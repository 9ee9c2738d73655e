"""The compare charts' smoothing and downsampling against values worked out by hand."""
import math

import numpy as np
import pytest

from training.compare.curves import EmaState, downsample, ema, group_band


def test_ema_debiases_the_first_points():
    # w = 0.5: biased 0.5, 1.75, 2.375 over 1 − 0.5^n = 0.5, 0.75, 0.875 (undebiased it would start at 0.5)
    smoothed, state = ema([1.0, 3.0, 3.0], 0.5)
    assert smoothed.tolist() == pytest.approx([1.0, 1.75 / 0.75, 2.375 / 0.875])
    assert state == EmaState(last=pytest.approx(2.375), count=3)


def test_ema_passes_non_finite_points_through_without_counting_them():
    smoothed, state = ema([2.0, math.nan, math.inf, 4.0], 0.5)
    assert smoothed[0] == pytest.approx(2.0)
    assert math.isnan(smoothed[1]) and smoothed[2] == math.inf
    # the second finite point is n = 2: (0.5·1 + 0.5·4) / (1 − 0.25) = 2.5 / 0.75
    assert smoothed[3] == pytest.approx(2.5 / 0.75)
    assert state.count == 2


def test_ema_weight_zero_is_the_raw_series_and_a_constant_stays_constant():
    assert ema([5.0, 1.0, 3.0], 0.0)[0].tolist() == [5.0, 1.0, 3.0]
    assert ema([0.7] * 50, 0.99)[0].tolist() == [0.7] * 50


def test_ema_continues_from_a_state_as_if_the_series_were_whole():
    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    whole, _ = ema(y, 0.6)
    head, state = ema(y[:5], 0.6)
    tail, _ = ema(y[5:], 0.6, state)
    assert np.concatenate([head, tail]) == pytest.approx(whole)
    # by hand for the third point: biased 1.2, 1.12, 2.272 over 1 − 0.6³ = 0.784
    assert whole[2] == pytest.approx(2.272 / 0.784)


def test_ema_refuses_a_weight_outside_zero_to_one():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ema([1.0], 1.0)


def test_a_series_that_fits_is_kept_whole():
    x = np.arange(10.0)
    assert downsample(x, x * 2, max_points=1000).tolist() == list(range(10))


def test_a_spike_inside_a_bucket_survives():
    x = np.arange(100_000, dtype=float)
    y = np.ones_like(x)
    y[54_321] = 50.0  # one step's spike
    y[77_777] = -3.0  # and one dip
    kept = downsample(x, y)
    assert len(kept) <= 1000
    assert 54_321 in kept and 77_777 in kept
    assert y[kept].max() == 50.0 and y[kept].min() == -3.0


def test_each_bucket_keeps_its_min_max_and_last_by_hand():
    # 12 points, max_points 10: (10 − 2) // 4 = 2 buckets over x 0..11, split at x = 5.5 → [0..5], [6..11]
    x = np.arange(12.0)
    y = np.array([5, 1, 9, 4, 4, 3, 2, 8, 0, 7, 7, 6], dtype=float)
    kept = downsample(x, y, max_points=10).tolist()
    # bucket 1: min at 1, max at 2, last 5; bucket 2: min at 8, max at 7, last 11
    assert kept == [1, 2, 5, 7, 8, 11]


def test_a_non_finite_point_is_kept_as_a_gap():
    x = np.arange(5000.0)
    y = np.sin(x)
    y[1234] = np.nan
    kept = downsample(x, y)
    assert 1234 in kept


def test_a_zoomed_range_is_bucketed_over_that_range_with_one_neighbour_each_side():
    x = np.arange(100_000, dtype=float)
    y = np.cos(x / 100)
    kept = downsample(x, y, x0=20_000, x1=20_500)
    assert kept.tolist() == list(range(19_999, 20_502))
    kept = downsample(x, y, x0=10_000, x1=60_000)
    assert len(kept) <= 1000
    assert kept[0] == 9_999 and kept[-1] == 60_001
    assert ((x[kept[1:-1]] >= 10_000) & (x[kept[1:-1]] <= 60_000)).all()


def test_group_band_is_the_mean_min_and_max_on_a_common_grid():
    a = (np.array([0.0, 10.0]), np.array([1.0, 3.0]))
    b = (np.array([0.0, 10.0]), np.array([3.0, 5.0]))
    c = (np.array([0.0, 5.0]), np.array([2.0, 2.0]))  # ends at x = 5: no value at x = 10
    band = group_band([a, b, c], points=3)
    assert band["x"].tolist() == [0.0, 5.0, 10.0]
    # x = 5: a 2, b 4, c 2; x = 10: a 3, b 5 only
    assert band["mean"].tolist() == pytest.approx([2.0, 8 / 3, 4.0])
    assert band["min"].tolist() == [1.0, 2.0, 3.0]
    assert band["max"].tolist() == [3.0, 4.0, 5.0]
