"""benchmarks/accuracy.py holds every function to its bound in the one table of error
bounds (mpc_ml.primitives.approximations.ERROR_BOUNDS), on grids inside its domain, and
its small run passes."""

import pytest

from helpers import load_benchmark

from mpc_ml.primitives.approximations import ERROR_BOUNDS



@pytest.fixture(scope="module")
def accuracy():
    return load_benchmark("accuracy")


def test_bounds_are_error_bounds_and_grids_stay_in_the_domain(accuracy):
    for row in accuracy.ROWS:
        if row.name == "x / y":  # the reciprocal's bound, plus 2^-16 |x|
            assert row.bound.tolerance == ERROR_BOUNDS["reciprocal"].tolerance
            assert row.bound.per_input == 2.0 ** -16
        elif row.name == "layer_norm":  # (x - mean) * inv_sqrt(var + eps): twice inv_sqrt's
            assert row.bound.tolerance == 2 * ERROR_BOUNDS["inv_sqrt"].tolerance
            assert row.bound.relative
        else:
            assert row.bound is ERROR_BOUNDS[row.name], row.name
        inputs = row.make(101)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        assert bool(row.bound.in_domain(inputs[-1]).all()), (row.name, row.domain)
    assert {row.name for row in accuracy.ROWS} >= set(ERROR_BOUNDS)  # every function has a row


def test_small_run_passes(accuracy, capsys):
    assert accuracy.main(["--points", "101", "--exact-n", "1000"]) == 0
    text = capsys.readouterr().out
    assert "mpc_ml/primitives/approximations.py" in text and "functions.py" not in text
    assert ERROR_BOUNDS["gelu"].describe().replace("|", "\\|") in text
