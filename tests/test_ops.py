"""Every arithmetic operation of MPCTensor against plaintext torch, over the full
matrix of party counts (2, 3, 4), backends (inproc, tcp, mpi) and providers (tfp, dealer).

Each configuration is launched once (module-scoped fixture): the parties run every
case and party 0 returns (private result, plaintext result, tolerance) per case; the
tests below then check one case each, so a failure names the case and configuration.
"""

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import FIXED_POINT_UNIT, enc, seeded

MAGNITUDES = (1e-3, 1.0, 1e3)


def data(name: str, *shape, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(*shape, generator=seeded(name), dtype=torch.float64) * 2 - 1).mul(scale).to(dtype)


def tol(*magnitudes, k: int = 1) -> float:
    """Error bound for a sum of k products of inputs of these magnitudes: each encoded
    input is within half a unit, each truncation within one unit."""
    total = 1 + sum(magnitudes) * k
    return 4 * FIXED_POINT_UNIT * total




# -- cases: each returns (private result decrypted, expected, tolerance) ------------------
def case_encrypt_each_src():
    out = []
    for src in range(mpc.world_size()):
        t = data(f"src{src}", 3, 4, scale=10)
        out.append((enc(t, src).decrypt(), t, tol(10)))
    return out


def case_decrypt_dst():
    t = data("dst", 5)
    out = []
    for dst in range(mpc.world_size()):
        got = enc(t, 0).decrypt(dst=dst)
        if mpc.rank() == dst:
            out.append((got, t, tol(1)))
        else:
            assert got is None, "a party other than dst received the value"
    return out


def case_float64_roundtrip():
    t = data("f64", 4, dtype=torch.float64)
    got = enc(t, 0).decrypt()
    assert got.dtype == torch.float64
    return [(got, t, tol(1))]


def case_add_sub_neg():
    out = []
    for m in MAGNITUDES:
        a, b = data(f"a{m}", 2, 3, scale=m), data(f"b{m}", 2, 3, scale=m)
        x, y = enc(a, 0), enc(b, 1)
        out += [((x + y).decrypt(), a + b, tol(m)), ((x - y).decrypt(), a - b, tol(m)),
                ((-x).decrypt(), -a, tol(m)), ((x + b).decrypt(), a + b, tol(m)),
                ((b - x).decrypt(), b - a, tol(m)), ((2.5 + x).decrypt(), a + 2.5, tol(m)),
                ((x + b[0]).decrypt(), a + b[0], tol(m))]  # broadcasting public
    return out


def case_mul():
    out = []
    for m in MAGNITUDES:
        a, b = data(f"ma{m}", 3, 4, scale=m), data(f"mb{m}", 3, 4, scale=m)
        x, y = enc(a, 0), enc(b, mpc.world_size() - 1)
        out += [((x * y).decrypt(), a * b, tol(m, m * m)),
                ((x * b).decrypt(), a * b, tol(m, m * m)),
                ((b * x).decrypt(), a * b, tol(m, m * m)),
                ((x * 3).decrypt(), a * 3, tol(3 * m)),
                ((0.25 * x).decrypt(), a * 0.25, tol(m))]
    a, b = data("bc_a", 2, 1, 4), data("bc_b", 3, 1)
    out.append(((enc(a, 0) * enc(b, 1)).decrypt(), a * b, tol(1, 1)))  # broadcasting
    return out


def case_matmul():
    out = []
    for m in MAGNITUDES:
        a, b = data(f"mm_a{m}", 4, 6, scale=m), data(f"mm_b{m}", 6, 3, scale=m)
        x, y = enc(a, 0), enc(b, 1)
        out += [((x @ y).decrypt(), a @ b, tol(m, m * m, k=6)),
                ((x @ b).decrypt(), a @ b, tol(m, m * m, k=6)),
                ((a @ y).decrypt(), a @ b, tol(m, m * m, k=6))]
    a, b = data("bmm_a", 2, 3, 4, 5), data("bmm_b", 5, 2)
    out.append(((enc(a, 1) @ enc(b, 0)).decrypt(), a @ b, tol(1, k=5)))  # batched
    v, w = data("mv_a", 5), data("mv_b", 5, 3)
    out.append(((enc(v, 0) @ enc(w, 1)).decrypt(), v @ w, tol(1, k=5)))  # vector-matrix
    out.append(((enc(v, 0) @ enc(v, 1)).decrypt(), v @ v, tol(1, k=5)))  # dot -> scalar
    out.append(((enc(a, 0).matmul(b)).decrypt(), a @ b, tol(1, k=5)))
    return out


def case_conv():
    out = []
    x, w, b = data("cx", 2, 4, 7, 6), data("cw", 6, 2, 3, 3), data("cb", 6)
    kw = dict(stride=2, padding=1, dilation=1, groups=2)
    expected = F.conv2d(x, w, b, **kw)
    px, pw, pb = enc(x, 0), enc(w, 1), enc(b, 1)
    out += [(px.conv2d(pw, pb, **kw).decrypt(), expected, tol(1, k=18)),
            (px.conv2d(w, b, **kw).decrypt(), expected, tol(1, k=18)),
            (mpc.conv2d(x, pw, pb, **kw).decrypt(), expected, tol(1, k=18))]
    w2 = data("cw2", 3, 4, 2, 3)
    kw2 = dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1))
    out.append((enc(x, 0).conv2d(enc(w2, 1), **kw2).decrypt(), F.conv2d(x, w2, **kw2), tol(1, k=24)))
    x1, w1 = data("c1x", 3, 4, 9, scale=10), data("c1w", 2, 4, 3)
    out.append((enc(x1, 1).conv1d(enc(w1, 0), stride=2, padding=1).decrypt(),
                F.conv1d(x1, w1, stride=2, padding=1), tol(10, 10, k=12)))
    return out


def case_div_public():
    out = []
    a = data("div", 3, 4, scale=100)
    x = enc(a, 0)
    for d in (3, 0.1, 7.5, 1000.0):
        out.append(((x / d).decrypt(), a / d, tol(100 / d) + 1e-4 * abs(float(a.abs().max()) / d)))
    d = torch.tensor([1.0, 2.0, 4.0, 250.0])
    out.append(((x / d).decrypt(), a / d, tol(100)))
    return out


def case_sum_mean():
    a = data("sum", 3, 4, 5, scale=10)
    x = enc(a, 0)
    return [(x.sum().decrypt(), a.sum(), tol(10 * 60)),
            (x.sum(1).decrypt(), a.sum(1), tol(10 * 4)),
            (x.sum(-1, keepdim=True).decrypt(), a.sum(-1, keepdim=True), tol(50)),
            (x.mean().decrypt(), a.mean(), tol(10)),
            (x.mean(0).decrypt(), a.mean(0), tol(10)),
            (x.mean(2, keepdim=True).decrypt(), a.mean(2, keepdim=True), tol(10))]


def case_shapes():
    a = data("shape", 2, 3, 4)
    x = enc(a, 0)
    b = data("shape_b", 2, 3, 4)
    y = enc(b, 1)
    return [
        (x.reshape(6, 4).decrypt(), a.reshape(6, 4), tol(1)),
        (x.view(-1).decrypt(), a.view(-1), tol(1)),
        (x.flatten(1).decrypt(), a.flatten(1), tol(1)),
        (x.transpose(0, 2).decrypt(), a.transpose(0, 2), tol(1)),
        (x.permute(2, 0, 1).decrypt(), a.permute(2, 0, 1), tol(1)),
        (x[0].t().decrypt(), a[0].t(), tol(1)),
        (x[:, 1:, ::2].decrypt(), a[:, 1:, ::2], tol(1)),
        (x[torch.tensor([1, 0])].decrypt(), a[torch.tensor([1, 0])], tol(1)),
        (mpc.cat([x, y], dim=1).decrypt(), torch.cat([a, b], 1), tol(1)),
        (mpc.cat([x, b], dim=0).decrypt(), torch.cat([a, b], 0), tol(1)),
        (mpc.stack([x, y], dim=0).decrypt(), torch.stack([a, b]), tol(1)),
        (x.pad((1, 2)).decrypt(), F.pad(a, (1, 2)), tol(1)),
        (x.pad((1, 1, 0, 2), value=1.5).decrypt(), F.pad(a, (1, 1, 0, 2), value=1.5), tol(1)),
        (x.unsqueeze(1).squeeze(1).decrypt(), a, tol(1)),
        (mpc.where(a > 0, x, y).decrypt(), torch.where(a > 0, a, b), tol(1)),
        (mpc.where(a > 0, x, 0.0).decrypt(), torch.where(a > 0, a, 0.0), tol(1)),
        (x.to("cpu").decrypt(), a, tol(1)),
    ]


def case_setitem():
    a, b = data("set_a", 3, 4), data("set_b", 4)
    x = enc(a, 0)
    x[1] = enc(b, 1)
    x[2, :2] = torch.tensor([5.0, -5.0])
    expected = a.clone()
    expected[1] = b
    expected[2, :2] = torch.tensor([5.0, -5.0])
    return [(x.decrypt(), expected, tol(5))]


def case_private_where():
    a, b = data("pw_a", 6), data("pw_b", 6)
    cond = (data("pw_c", 6) > 0).float()
    return [(mpc.where(enc(cond, 1), enc(a, 0), enc(b, 0)).decrypt(),
             torch.where(cond.bool(), a, b), tol(2, 2))]


def case_scalars_and_empty():
    s = torch.tensor(2.5)
    x = enc(s, 0)
    e = torch.zeros(0, 3)
    z = enc(e, 1)
    out = [((x * enc(torch.tensor(-4.0), 1)).decrypt(), torch.tensor(-10.0), tol(10)),
           ((x + 1).decrypt(), s + 1, tol(1))]
    ze = (z * z).decrypt()
    assert ze.shape == (0, 3)
    out.append((ze, e, tol(1)))
    out.append(((z @ enc(torch.ones(3, 2), 0)).decrypt(), torch.zeros(0, 2), tol(1)))
    out.append(((enc(torch.ones(2, 0), 0) @ enc(torch.ones(0, 3), 1)).decrypt(),
                torch.zeros(2, 3), tol(1)))
    return out


def case_integer_input():
    t = torch.arange(-5, 5)
    x = enc(t, 0)
    return [((x * x).decrypt(), (t * t).float(), tol(25)), ((x * 2).decrypt(), (t * 2).float(), 0.0)]


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def run_all_cases():
    """Party body: every case; party 0 returns {case: [(got, expected, tol)]}."""
    results = {name: fn() for name, fn in CASES.items()}
    return results if mpc.rank() == 0 else {name: len(r) for name, r in results.items()}


@pytest.fixture(scope="module")
def matrix_results():
    cache = {}

    def get(cfg):
        if cfg not in cache:
            cache[cfg] = cfg.run(run_all_cases)
        return cache[cfg]

    return get


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_against_torch(matrix_results, matrix, case):
    outs = matrix_results(matrix)
    checks = outs[0][case]
    assert checks, f"case {case} checked nothing"
    for i, (got, expected, bound) in enumerate(checks):
        assert got.shape == expected.shape, f"{case}[{i}]: shape {got.shape} != {expected.shape}"
        err = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
        assert err <= bound, f"{case}[{i}]: max error {err:.3g} > {bound:.3g}"


def test_limb_kernels_match_int64_path():
    """The CUDA limb path (float64 limb products), forced on CPU, through whole protocols."""
    def body():
        return {name: CASES[name]() for name in ("matmul", "conv")}

    outs = mpc.run(body, world_size=3, config=mpc.Config(force_limbs=True))
    for name, checks in outs[0].items():
        for got, expected, bound in checks:
            assert (got.double() - expected.double()).abs().max().item() <= bound, name


def test_local_truncation_two_parties():
    def body():
        a, b = data("lt_a", 50, 50), data("lt_b", 50, 50)
        return (enc(a, 0) @ enc(b, 1)).decrypt(), a @ b, mpc.stats()

    got, expected, stats = mpc.run(body, world_size=2, config=mpc.Config(truncation="local"))[0]
    assert (got - expected).abs().max() <= tol(1, k=50)
    with pytest.raises(ValueError, match="only correct for 2 parties"):
        mpc.run(body, world_size=3, config=mpc.Config(truncation="local"))


def test_large_products_do_not_wrap():
    """Exact truncation never fails catastrophically, even near the range limit."""
    def body():
        a = data("big_a", 20000, scale=2.0 ** 14, dtype=torch.float64)
        b = data("big_b", 20000, scale=2.0 ** 14, dtype=torch.float64)
        return (enc(a, 0) * enc(b, 1)).decrypt(), a * b

    got, expected = mpc.run(body, world_size=2)[0]
    assert (got.double() - expected).abs().max().item() <= 2 ** 13 * 4 * FIXED_POINT_UNIT * 2 + 1e-3


def test_repr_does_not_reveal():
    def body():
        x = enc(torch.tensor([123.0]), 0)
        return repr(x)

    reprs = mpc.run(body, world_size=2)
    assert all("123" not in r and "private" in r for r in reprs)
