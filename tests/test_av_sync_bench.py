"""Pure helpers of benchmarks/av_sync_bench.py (AUC, false-reject / catch rates, length fit)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "av_sync_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "av_sync_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_auc_mann_whitney():
    assert bench.auc_mann_whitney([3, 4], [1, 2]) == 1.0
    assert bench.auc_mann_whitney([1, 2], [3, 4]) == 0.0
    assert bench.auc_mann_whitney([1.0], [1.0]) == 0.5                 # ties count one half
    assert bench.auc_mann_whitney([2, 0], [1]) == 0.5
    assert bench.auc_mann_whitney([np.nan], [-5.0]) == 0.0             # NaN ranks lowest
    assert bench.auc_mann_whitney([np.nan], [np.nan]) == 0.5
    assert np.isnan(bench.auc_mann_whitney([], [1.0]))


def test_rates_and_fit_length():
    assert bench.rates([True, False, False, False], [True, True, False]) == (0.25, 2 / 3)
    assert all(np.isnan(bench.rates([], [])))
    np.testing.assert_array_equal(bench.fit_length(np.arange(3), 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(bench.fit_length(np.arange(5), 2), [0, 1])
    assert bench.fit_length(np.zeros(0), 3).tolist() == [0, 0, 0]
