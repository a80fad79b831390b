"""benchmarks/costmodel.py: every op row of the suite gets rounds and bytes sent per party
from the formulas of protocols/, and they equal what a run of the row's operation
(its --quick inputs, inproc backend) measures; model rows say that no spec exists."""
import sys
from pathlib import Path

import pytest

import mpc_ml as mpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import costmodel  # noqa: E402
import rows  # noqa: E402  (every row: ops.py's, models.py's and the suite's own)
import suite  # noqa: E402
from common import WORLD_SIZE  # noqa: E402


def measure(names: list[str], n: int, provider: str, config: mpc.Config | None = None) -> dict:
    """Per row: each party's rounds and bytes sent for one run of the row's operation."""
    def party():
        rank = mpc.rank()
        out = {}
        for name in names:
            inputs = rows.inputs(name, quick=True)
            xs = [mpc.encrypt(t if rank == i % WORLD_SIZE else None, src=i % WORLD_SIZE,
                              shape=t.shape) for i, t in enumerate(inputs)]
            mpc.reset_stats()
            rows.ALL_OPS[name].private(*xs)
            s = mpc.stats()
            out[name] = (s["rounds"], s["bytes_sent"])
        return out

    per_rank = mpc.run(party, world_size=n, backend="inproc", provider=provider, config=config)
    return {name: ([r[name][0] for r in per_rank], [r[name][1] for r in per_rank])
            for name in names}


def test_every_op_row_has_a_spec():
    assert set(suite.OP_ROWS) <= set(costmodel.ROWS)
    for name in suite.OP_ROWS:
        for quick in (True, False):
            spec = costmodel.predict(name, rows.inputs(name, quick), 3)
            assert len(spec["rounds"]) == len(spec["bytes_sent"]) == 3, name
            assert min(spec["rounds"]) >= 1 and min(spec["bytes_sent"]) > 0, name


@pytest.mark.parametrize("n,provider", [(2, "tfp"), (3, "tfp"), (3, "dealer")])
def test_spec_equals_measured_for_every_op_row(n, provider):
    measured = measure(suite.OP_ROWS, n, provider)
    for name in suite.OP_ROWS:
        spec = costmodel.predict(name, rows.inputs(name, quick=True), n)
        rounds, sent = measured[name]
        assert costmodel.check(spec, rounds, sent) == (True, "equal"), (name, n, spec, rounds, sent)


def test_check_prints_both_numbers_and_models_have_no_spec():
    spec = {"rounds": [9, 9], "bytes_sent": [100, 100]}
    match, text = costmodel.check(spec, [9, 10], [100, 100])
    assert match is False and text == "differs: rounds measured 9/10 spec 9/9"
    for name in suite.MODEL_ROWS:
        assert costmodel.predict(name, (), 2) is None
    assert costmodel.check(None, [1, 1], [8, 8]) == (None, "n/a (no model spec)")


def test_under_fss_the_rows_with_a_spec_equal_it_and_the_others_say_why():
    """suite.py's dealer-fss rows: relu and max per fss_comparison.toml, the rows without
    comparisons per their usual specs, the other comparison rows without a spec."""
    names = ["relu1e5", "max1e5", "mul1e6", "exp1e5", "sigmoid1e5"]
    measured = measure(names, 2, "dealer", mpc.Config(comparison="fss"))
    for name in names:
        spec = costmodel.predict(name, rows.inputs(name, quick=True), 2, "fss")
        rounds, sent = measured[name]
        if name == "sigmoid1e5":
            assert spec is None
            assert costmodel.check(spec, rounds, sent, costmodel.NO_FSS_SPEC)[1] == "n/a (no fss spec)"
        else:
            assert costmodel.check(spec, rounds, sent) == (True, "equal"), (name, spec, rounds, sent)
    assert measured["relu1e5"][0] == [2, 2] and measured["max1e5"][0] == [8, 8]
