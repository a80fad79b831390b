"""Observers at the recording point: the validation mode and the correlation trace."""
from __future__ import annotations

import re

import pytest
import torch

import mpc_ml as mpc
from mpc_ml.core.ops import Op
from mpc_ml.primitives import approximations
from mpc_ml.tensor import ValidationError, trace_correlations

VALIDATE = mpc.Config(validate=True)


def _small_step(x_t: torch.Tensor, w_t: torch.Tensor):
    """Forward and backward through most kinds of op: products, relu, max, softmax, shapes."""
    x = mpc.encrypt(x_t, src=0)
    w = mpc.encrypt(w_t, src=1).requires_grad_()
    h = (x @ w).relu()
    pooled = h.reshape(2, 1, 2, 4).max_pool2d(2)
    z = mpc.cat([h.sum(1, keepdim=True), pooled.flatten(1)], 1).softmax(1)
    loss = (z * z).sum() / 4 + h.abs().mean() + (h > 0.1).sum() * 0.0
    loss.backward()
    return z.decrypt(), w.grad.decrypt()


@pytest.mark.parametrize("provider", ["tfp", "dealer"])
def test_validation_mode_passes_correct_ops_and_changes_no_result(provider):
    x, w = torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), torch.randn(3, 8)
    plain = mpc.run(_small_step, 2, provider=provider, args=(x, w))
    checked = mpc.run(_small_step, 2, provider=provider, args=(x, w), config=VALIDATE)
    for (z0, g0), (z1, g1) in zip(plain, checked):
        assert torch.allclose(z0, z1, atol=1e-3) and torch.allclose(g0, g1, atol=1e-3)


def test_validation_names_the_first_op_that_drifts(monkeypatch):
    """A protocol that is off by 0.01 on party 0 is caught at its op, not at the end."""
    real = approximations.sigmoid

    def drifting(session, x):
        share, bits = real(session, x)  # left pending by `bits`
        return share + ((655 << bits) if session.rank == 0 else 0), bits  # 0.01 at f = 16

    monkeypatch.setattr(approximations, "sigmoid", drifting)

    def party():
        x = mpc.encrypt(torch.tensor([[0.5, -1.0, 2.0]]), src=0)
        return (x * 2.0).sigmoid().exp().decrypt()

    with pytest.raises(mpc.PartyError) as raised:
        mpc.run(party, 2, config=VALIDATE)
    message = str(raised.value)
    assert "ValidationError" in message and "validation: sigmoid of (private (1, 3))" in message
    assert re.search(r"differs from plaintext by 0\.0(1|099)", message), message  # 655 / 2^16
    assert f"bound {approximations.ERROR_BOUNDS['sigmoid'].tolerance:.3g}" in message


def test_validation_says_when_an_input_is_outside_the_stated_domain():
    def party():
        return mpc.encrypt(torch.tensor([1.0, 20.0]), src=0).exp().decrypt()

    with pytest.raises(mpc.PartyError, match=r"exp of .* outside its domain \[-8, 8\]"):
        mpc.run(party, 2, config=VALIDATE)
    assert mpc.run(party, 2)[0][0].item() == pytest.approx(2.71828, abs=1e-3)  # off: no check


def test_validation_error_is_raised_inside_the_party(monkeypatch):
    real = approximations.exp

    def doubled(session, x):
        share, pending = real(session, x)
        return share * 2, pending

    monkeypatch.setattr(approximations, "exp", doubled)

    def party():
        try:
            mpc.encrypt(torch.tensor([1.0]), src=0).exp()
        except ValidationError as e:
            return str(e)
        return None

    out = mpc.run(party, 2, config=VALIDATE)
    assert out[0] == out[1] and out[0].startswith("validation: exp")


def _traced(x_t: torch.Tensor):
    x = mpc.encrypt(x_t, src=0)
    w = mpc.encrypt(torch.ones(4, 5), src=1)
    with trace_correlations() as trace:
        y = (x @ w).relu()
        y.sum()
    y.decrypt()
    return [(e.op, e.shape, [(r["kind"], r["params"]) for r in e.requests]) for e in trace.entries]


@pytest.mark.parametrize("provider", ["tfp", "dealer"])
def test_correlation_trace_lists_each_ops_requests_by_kind_and_shape(provider):
    first, second = mpc.run(_traced, 2, provider=provider, args=(torch.randn(3, 4),))
    assert first == second  # every party asks for the same correlations
    ops = [op for op, _, _ in first]
    assert ops == [Op.MATMUL, Op.RELU, Op.SUM]
    (_, shape, matmul), (_, _, relu), (_, _, total) = first
    assert shape == (3, 5)
    assert matmul[0] == ("triple", {"op": "matmul", "a_shape": [3, 4], "b_shape": [4, 5], "kwargs": {}})
    assert len(matmul) == 1  # the product is left pending (lazy truncation)
    kinds = [kind for kind, _ in relu]
    assert kinds[0] == "trunc"  # the matmul's truncation, riding on the comparison
    # the comparison's ANDs (the first on the parties' own words for 2 parties), and the bit's
    # conversion with the product x * bit in one correlation
    assert {"held_btriple", "band", "bit_product"} <= set(kinds)
    assert not {"dabits", "triple"} & set(kinds)
    assert total == []  # a sum is local


def test_correlation_trace_does_not_depend_on_the_data():
    small = mpc.run(_traced, 2, args=(torch.zeros(3, 4),))[0]
    large = mpc.run(_traced, 2, args=(torch.randn(3, 4) * 100,))[0]
    assert small == large


def test_validation_catches_a_product_beyond_the_documented_range():
    """|x y| < 2^30 cannot be checked without revealing data; the validation mode names
    the product that overflowed."""
    def party():
        x = mpc.encrypt(torch.tensor([70000.0, 2.0]), src=0)  # (x^2 2^32 passes 2^63: wraps)
        return (x * x).decrypt()

    with pytest.raises(mpc.PartyError, match=r"validation: mul of \(private \(2,\), private \(2,\)\)"):
        mpc.run(party, 2, config=VALIDATE)
