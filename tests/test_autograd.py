"""Autograd on MPCTensor against torch autograd on the same inputs.

Every differentiable op runs on private leaves (requires_grad_(), alternately shared
by party 0 and party 1, public operands mixed in where the op takes them), the output
gets a random public upstream gradient, and the forward value and every leaf's .grad
are compared with torch.autograd. Tolerance: `tol * max(1, max |torch value|)` per
compared tensor (1e-3 unless the case says otherwise: the nonlinear functions carry the
errors of their ERROR_BOUNDS entries, mpc_ml/primitives/approximations.py). Then the
tape's own rules: gradient accumulation over two backward() calls, fan-out, detach,
no_grad / enable_grad, and torch's errors.
"""

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import assert_near, enc, rnd, seeded


class TorchLib:
    cat, stack, where = staticmethod(torch.cat), staticmethod(torch.stack), staticmethod(torch.where)
    conv2d, conv1d = staticmethod(F.conv2d), staticmethod(F.conv1d)
    max_pool2d, avg_pool2d = staticmethod(F.max_pool2d), staticmethod(F.avg_pool2d)
    gelu, pad = staticmethod(F.gelu), staticmethod(F.pad)
    erf = staticmethod(torch.erf)


class MpcLib:
    cat, stack, where = staticmethod(mpc.cat), staticmethod(mpc.stack), staticmethod(mpc.where)
    conv2d, conv1d = staticmethod(mpc.conv2d), staticmethod(mpc.conv1d)
    max_pool2d = staticmethod(lambda x, *a, **k: x.max_pool2d(*a, **k))
    avg_pool2d = staticmethod(lambda x, *a, **k: x.avg_pool2d(*a, **k))
    gelu = staticmethod(lambda x: x.gelu())
    pad = staticmethod(lambda x, p: x.pad(p))
    erf = staticmethod(lambda x: x.erf())


def P(*shape, lo=-1.0, hi=1.0):
    """A private input (requires grad)."""
    return ("private", shape, lo, hi)


def C(*shape, lo=-1.0, hi=1.0):
    """A public input (a plain torch tensor: no gradient)."""
    return ("public", shape, lo, hi)


# name -> (fn(lib, *inputs), input specs, tolerance)
CASES = {
    # arithmetic and broadcasting
    "add": (lambda L, a, b: a + b, [P(3, 4), P(3, 4)], 1e-3),
    "add_broadcast": (lambda L, a, b: a + b, [P(2, 3, 4), P(4)], 1e-3),
    "add_broadcast_keepdim": (lambda L, a, b: a + b, [P(3, 1), P(1, 4)], 1e-3),
    "add_public": (lambda L, a, p: (a + p) + (p + a) + 2.5, [P(3, 4), C(4)], 1e-3),
    "sub": (lambda L, a, b: a - b, [P(3, 4), P(3, 4)], 1e-3),
    "rsub_public": (lambda L, a, p: (p - a) + (1.5 - a), [P(3, 4), C(3, 4)], 1e-3),
    "neg": (lambda L, a: -a, [P(5)], 1e-3),
    "mul": (lambda L, a, b: a * b, [P(3, 4), P(3, 4)], 1e-3),
    "mul_broadcast": (lambda L, a, b: a * b, [P(2, 3, 4), P(3, 1)], 1e-3),
    "mul_public": (lambda L, a, p: a * p + p * a + a * 0.3 + 3 * a, [P(3, 4), C(3, 4)], 1e-3),
    "square_pow": (lambda L, a: a.square() + a ** 3, [P(6)], 1e-3),
    "div_public": (lambda L, a, p: a / 3.0 + a / p, [P(3, 4), C(4, lo=1.0, hi=4.0)], 1e-3),
    "div_private": (lambda L, a, b: a / b, [P(3, 4), P(3, 4, lo=1.0, hi=3.0)], 2e-3),
    "rdiv": (lambda L, b: 2.0 / b, [P(5, lo=1.0, hi=3.0)], 2e-3),
    "sum_all": (lambda L, a: a.sum(), [P(3, 4)], 1e-3),
    "sum_dim": (lambda L, a: a.sum(1), [P(2, 3, 4)], 1e-3),
    "sum_dims_keepdim": (lambda L, a: a.sum((0, 2), keepdim=True), [P(2, 3, 4)], 1e-3),
    "sum_negative_dim": (lambda L, a: a.sum(-1), [P(2, 3, 4)], 1e-3),
    "mean": (lambda L, a: a.mean() + a.mean(0).sum(), [P(3, 4)], 1e-3),
    "fan_out": (lambda L, a: a * a + a, [P(4)], 1e-3),
    # products
    "matmul": (lambda L, a, b: a @ b, [P(3, 4), P(4, 5)], 1e-3),
    "matmul_batched_broadcast": (lambda L, a, b: a @ b, [P(2, 3, 4), P(4, 5)], 1e-3),
    "matmul_batched_both": (lambda L, a, b: a.matmul(b), [P(2, 3, 4), P(2, 4, 2)], 1e-3),
    "matmul_vector_matrix": (lambda L, a, b: a @ b, [P(4), P(4, 3)], 1e-3),
    "matmul_matrix_vector": (lambda L, a, b: a @ b, [P(3, 4), P(4)], 1e-3),
    "matmul_dot": (lambda L, a, b: a @ b, [P(4), P(4)], 1e-3),
    "matmul_public_right": (lambda L, a, p: a @ p, [P(3, 4), C(4, 2)], 1e-3),
    "matmul_public_left": (lambda L, p, a: p @ a, [C(2, 3), P(3, 4)], 1e-3),
    "linear_t": (lambda L, x, w, b: x @ w.t() + b, [P(5, 4), P(3, 4), P(3)], 1e-3),
    "conv2d": (lambda L, x, w, b: L.conv2d(x, w, b), [P(2, 3, 6, 6), P(4, 3, 3, 3), P(4)], 1e-3),
    "conv2d_stride_padding": (lambda L, x, w: L.conv2d(x, w, None, stride=2, padding=1),
                              [P(2, 3, 7, 7), P(4, 3, 3, 3)], 1e-3),
    "conv2d_asymmetric": (lambda L, x, w: L.conv2d(x, w, None, stride=(2, 1), padding=(0, 2)),
                          [P(1, 2, 7, 6), P(3, 2, 3, 2)], 1e-3),
    "conv2d_dilation": (lambda L, x, w: L.conv2d(x, w, None, padding=2, dilation=2),
                        [P(2, 2, 7, 7), P(3, 2, 3, 3)], 1e-3),
    "conv2d_groups": (lambda L, x, w, b: L.conv2d(x, w, b, stride=2, padding=1, groups=2),
                      [P(2, 4, 7, 7), P(6, 2, 3, 3), P(6)], 1e-3),
    "conv2d_depthwise": (lambda L, x, w: L.conv2d(x, w, None, padding=1, groups=3),
                         [P(2, 3, 5, 5), P(3, 1, 3, 3)], 1e-3),
    "conv2d_all": (lambda L, x, w: L.conv2d(x, w, None, stride=2, padding=2, dilation=2, groups=2),
                   [P(2, 4, 9, 9), P(4, 2, 3, 3)], 1e-3),
    "conv2d_public_weight": (lambda L, x, w: L.conv2d(x, w, None, padding=1),
                             [P(1, 2, 5, 5), C(3, 2, 3, 3)], 1e-3),
    "conv2d_public_input": (lambda L, x, w: L.conv2d(x, w, None, stride=2),
                            [C(1, 2, 5, 5), P(3, 2, 3, 3)], 1e-3),
    "conv1d": (lambda L, x, w, b: L.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
               [P(2, 4, 11), P(6, 2, 3), P(6)], 1e-3),
    # shape operations
    "reshape_view_flatten": (lambda L, a: a.reshape(4, 6).view(2, 12).flatten() * 1.0,
                             [P(2, 3, 4)], 1e-3),
    "transpose_permute": (lambda L, a: a.transpose(0, 2).permute(1, 0, 2) * 1.0, [P(2, 3, 4)], 1e-3),
    "t_T": (lambda L, a, b: a.t() + b.T, [P(3, 4), P(3, 4)], 1e-3),
    "unsqueeze_squeeze": (lambda L, a: a.unsqueeze(1).squeeze(1).unsqueeze(0) * 1.0, [P(3, 4)], 1e-3),
    "expand": (lambda L, a: a.expand(2, 3, 4) * 1.0, [P(3, 1)], 1e-3),
    "getitem_slices": (lambda L, a: a[1:, ::2] * 1.0, [P(3, 5)], 1e-3),
    "getitem_int": (lambda L, a: a[1] + a[:, 0].sum(), [P(3, 4)], 1e-3),
    "getitem_tensor_repeated": (lambda L, a: a[torch.tensor([0, 2, 0])] * 1.0, [P(3, 4)], 1e-3),
    "narrow_split_chunk": (lambda L, a: a.narrow(1, 1, 2).sum() + a.split(2, 1)[1].sum()
                           + a.chunk(2, 0)[0].sum(), [P(4, 5)], 1e-3),
    "pad": (lambda L, a: L.pad(a, (1, 2, 0, 1)) * 1.0, [P(2, 3, 3)], 1e-3),
    "flip": (lambda L, a: a.flip((0, 1)) * 1.0, [P(3, 4)], 1e-3),
    "clone": (lambda L, a: a.clone() * 2.0, [P(3)], 1e-3),
    "cat": (lambda L, a, b: L.cat([a, b], 1), [P(2, 3), P(2, 2)], 1e-3),
    "cat_public": (lambda L, a, p: L.cat([p, a], 0), [P(2, 3), C(1, 3)], 1e-3),
    "stack": (lambda L, a, b: L.stack([a, b], 1), [P(2, 3), P(2, 3)], 1e-3),
    "where_public_condition": (lambda L, a, b: L.where(torch.tensor([True, False, True]), a, b),
                               [P(2, 3), P(2, 3)], 1e-3),
    # comparisons, piecewise and pooling
    "relu": (lambda L, a: a.relu(), [P(4, 5)], 1e-3),
    "abs": (lambda L, a: a.abs(), [P(4, 5)], 1e-3),
    "clamp": (lambda L, a: a.clamp(-0.5, 0.4), [P(4, 5)], 1e-3),
    "clamp_min": (lambda L, a: a.clamp(min=0.2), [P(4, 5)], 1e-3),
    "clamp_max": (lambda L, a: a.clamp(max=0.2), [P(4, 5)], 1e-3),
    "max_dim": (lambda L, a: a.max(1)[0], [P(3, 5)], 1e-3),
    "max_dim_keepdim": (lambda L, a: a.max(0, keepdim=True)[0], [P(3, 5)], 1e-3),
    "min_dim": (lambda L, a: a.min(-1)[0], [P(3, 5)], 1e-3),
    "max_all": (lambda L, a: a.max(), [P(3, 5)], 1e-3),
    "max_pool2d": (lambda L, a: L.max_pool2d(a, 2), [P(2, 3, 6, 6)], 1e-3),
    "max_pool2d_overlap_padding": (lambda L, a: L.max_pool2d(a, 3, 2, 1), [P(2, 2, 7, 7)], 1e-3),
    "avg_pool2d": (lambda L, a: L.avg_pool2d(a, 2), [P(2, 3, 6, 6)], 1e-3),
    "avg_pool2d_padding": (lambda L, a: L.avg_pool2d(a, 3, 2, 1), [P(2, 2, 7, 7)], 1e-3),
    "avg_pool2d_exclude_pad": (lambda L, a: L.avg_pool2d(a, 3, 2, 1, count_include_pad=False),
                               [P(2, 2, 7, 7)], 1e-3),
    # nonlinear functions (in the domains of approximations.ERROR_BOUNDS; looser than its
    # errors: a gradient composes the function's error with its derivative's)
    "exp": (lambda L, a: a.exp(), [P(3, 4, lo=-3.0, hi=2.0)], 2e-3),
    "log": (lambda L, a: a.log(), [P(3, 4, lo=0.3, hi=5.0)], 3e-3),
    "reciprocal": (lambda L, a: a.reciprocal(), [P(3, 4, lo=0.5, hi=4.0)], 3e-3),
    "sqrt": (lambda L, a: a.sqrt(), [P(3, 4, lo=0.3, hi=4.0)], 3e-3),
    "rsqrt": (lambda L, a: a.rsqrt(), [P(3, 4, lo=0.5, hi=4.0)], 3e-3),
    "sigmoid": (lambda L, a: a.sigmoid(), [P(3, 4, lo=-4.0, hi=4.0)], 1e-3),
    "tanh": (lambda L, a: a.tanh(), [P(3, 4, lo=-3.0, hi=3.0)], 2e-3),
    "erf": (lambda L, a: L.erf(a), [P(3, 4, lo=-2.5, hi=2.5)], 2e-3),
    "gelu": (lambda L, a: L.gelu(a), [P(3, 4, lo=-3.0, hi=3.0)], 2e-3),
    "softmax": (lambda L, a: a.softmax(1), [P(3, 5, lo=-3.0, hi=3.0)], 2e-3),
    "softmax_dim0": (lambda L, a: a.softmax(0), [P(4, 3, lo=-3.0, hi=3.0)], 2e-3),
    "log_softmax": (lambda L, a: a.log_softmax(1), [P(3, 5, lo=-3.0, hi=3.0)], 3e-3),
    "log_softmax_last": (lambda L, a: a.log_softmax(-1), [P(2, 3, 4, lo=-3.0, hi=3.0)], 3e-3),
    # a small composite: a 2-layer network with a softmax cross-entropy
    "mlp_composite": (lambda L, x, w1, w2: -((x @ w1).relu() @ w2).log_softmax(1)[:, 0].mean(),
                      [P(4, 6), P(6, 5), P(5, 3)], 3e-3),
}


def _inputs(name: str, specs):
    return [rnd(f"{name}-{i}", *shape, lo=lo, hi=hi) for i, (_, shape, lo, hi) in enumerate(specs)]


def _autograd_party(name, values, grad_out):
    fn, specs, _ = CASES[name]
    args = []
    for i, ((kind, *_), v) in enumerate(zip(specs, values)):
        args.append(enc(v, i % 2).requires_grad_() if kind == "private" else v)
    out = fn(MpcLib, *args)
    assert out.requires_grad and out.grad_fn is not None, "output of a tracked op has no grad_fn"
    out.backward(grad_out)
    grads = [a.grad.decrypt() if isinstance(a, mpc.MPCTensor) and a.grad is not None else None
             for a in args]
    return out.decrypt(), grads


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_torch(name):
    fn, specs, tol = CASES[name]
    values = _inputs(name, specs)
    leaves = [v.clone().requires_grad_(kind == "private") for (kind, *_), v in zip(specs, values)]
    expected = fn(TorchLib, *leaves)
    grad_out = rnd(f"{name}-upstream", *expected.shape)
    expected.backward(grad_out)

    out, grads = mpc.run(_autograd_party, world_size=2, backend="inproc",
                         args=(name, values, grad_out))[0]
    assert_near(out, expected, tol, f"{name} forward")
    for i, ((kind, *_), leaf) in enumerate(zip(specs, leaves)):
        if kind == "private":
            assert_near(grads[i], leaf.grad, tol, f"{name} grad of input {i}")


# -- the tape's rules ---------------------------------------------------------------------------
def test_requires_grad_defaults_and_leaves():
    def party():
        x = enc(torch.ones(3), 0)
        assert x.requires_grad is False and x.grad is None and x.grad_fn is None and x.is_leaf
        y = x * 2.0
        assert not y.requires_grad and y.grad_fn is None, "op on a tensor without grad was recorded"
        assert x.requires_grad_() is x and x.requires_grad
        z = x * 2.0
        assert z.requires_grad and z.grad_fn is not None and not z.is_leaf
        d = z.detach()
        assert not d.requires_grad and d.grad_fn is None
        with pytest.raises(RuntimeError):
            z.backward()  # not a single element: torch's error
        with pytest.raises(RuntimeError):
            y.sum().backward()  # does not require grad
        z.sum().backward()
        return x.grad.decrypt()

    got = mpc.run(party, world_size=2, backend="inproc")[0]
    assert_near(got, torch.full((3,), 2.0), 1e-3, "grad")


def test_gradient_accumulates_over_backward_calls():
    a, b = rnd("acc-a", 3, 4), rnd("acc-b", 4, 2)

    def party(a, b):
        x, w = enc(a, 1).requires_grad_(), enc(b, 0).requires_grad_()
        (x @ w).relu().sum().backward()
        first = w.grad.decrypt()
        ((x @ w) * (x @ w)).mean().backward()  # a second graph through the same leaves
        return first, w.grad.decrypt(), x.grad.decrypt()

    first, total, xg = mpc.run(party, world_size=2, backend="inproc", args=(a, b))[0]
    x, w = a.clone().requires_grad_(), b.clone().requires_grad_()
    (x @ w).relu().sum().backward()
    assert_near(first, w.grad, 1e-3, "after the first backward")
    ((x @ w) * (x @ w)).mean().backward()
    assert_near(total, w.grad, 1e-3, "w.grad after two backward calls")
    assert_near(xg, x.grad, 1e-3, "x.grad after two backward calls")


def test_detach_stops_gradient():
    a = rnd("detach", 4)

    def party(a):
        x = enc(a, 0).requires_grad_()
        (x * x.detach()).sum().backward()
        return x.grad.decrypt()

    got = mpc.run(party, world_size=2, backend="inproc", args=(a,))[0]
    assert_near(got, a, 1e-3, "d/dx sum(x * stop_gradient(x)) = x")


def test_no_grad_records_nothing():
    a = rnd("nograd", 3, 2)

    def party(a):
        x = enc(a, 1).requires_grad_()
        with mpc.no_grad():
            assert not mpc.is_grad_enabled()
            y = (x * x).relu().sum()
            assert y.grad_fn is None and not y.requires_grad
            with mpc.enable_grad():
                z = (x * 3.0).sum()
            assert z.grad_fn is not None
        assert mpc.is_grad_enabled()
        with pytest.raises(RuntimeError):
            y.backward()
        assert x.grad is None

        @mpc.no_grad()
        def infer(t):
            return t.exp()

        assert infer(x).grad_fn is None
        z.backward()
        return x.grad.decrypt()

    got = mpc.run(party, world_size=2, backend="inproc", args=(a,))[0]
    assert_near(got, torch.full((3, 2), 3.0), 1e-3, "grad recorded under enable_grad")


def test_grad_mode_is_per_party_thread():
    """no_grad in one inproc party must not switch recording off in the others."""
    def party():
        x = enc(torch.ones(2), 0).requires_grad_()
        if mpc.rank() == 0:
            with mpc.no_grad():
                mpc.encrypt(None, src=1, shape=(1,))  # a barrier while party 0 is in no_grad
                return None
        mpc.encrypt(torch.zeros(1), src=1)
        return (x * 2.0).grad_fn is not None

    assert mpc.run(party, world_size=2, backend="inproc")[1] is True


def test_max_gradients_with_ties_go_where_torch_sends_them():
    """Tied maxima (common after ReLU): torch routes the gradient to the first maximum
    of each window (max_pool2d) or row (max(dim)); so must the private one-hot mask."""
    x = (torch.randint(0, 3, (2, 2, 6, 6), generator=seeded("ties")) - 1).float()
    gp, gm = rnd("ties-gp", 2, 2, 3, 3), rnd("ties-gm", 24)

    def party(x, gp, gm):
        a, b = enc(x, 1).requires_grad_(), enc(x, 0).requires_grad_()
        a.max_pool2d(2).backward(gp)
        b.reshape(24, 6).max(1)[0].backward(gm)
        return a.grad.decrypt(), b.grad.decrypt()

    pool_grad, max_grad = mpc.run(party, world_size=2, backend="inproc", args=(x, gp, gm))[0]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    F.max_pool2d(a, 2).backward(gp)
    b.reshape(24, 6).max(1)[0].backward(gm)
    assert_near(pool_grad, a.grad, 1e-3, "max_pool2d grad with ties")
    assert_near(max_grad, b.grad, 1e-3, "max(dim) grad with ties")


def test_private_upstream_gradient_and_three_parties():
    a, b = rnd("three-a", 2, 5), rnd("three-b", 5, 3)
    gout = rnd("three-g", 2, 3)

    def party(a, b, gout):
        x, w = enc(a, 2).requires_grad_(), enc(b, 1).requires_grad_()
        y = (x @ w).sigmoid()
        y.backward(enc(gout, 0))
        return y.decrypt(), x.grad.decrypt(), w.grad.decrypt()

    y, xg, wg = mpc.run(party, world_size=3, backend="inproc", args=(a, b, gout))[0]
    x, w = a.clone().requires_grad_(), b.clone().requires_grad_()
    yt = (x @ w).sigmoid()
    yt.backward(gout)
    assert_near(y, yt, 1e-3, "forward")
    assert_near(xg, x.grad, 1e-3, "x.grad")
    assert_near(wg, w.grad, 1e-3, "w.grad")
