"""Ring kernels, fixed-point codec and PRG on their own."""
import pytest
import torch
import torch.nn.functional as F

from mpc_ml.core import ring
from mpc_ml.core.encoding import decode, encode, max_encodable
from mpc_ml.core.prg import PRG, new_seed


def full_range(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2 ** 63, 2 ** 63 - 1, shape, generator=g, dtype=torch.int64)


def python_matmul_mod(a, b):
    """Reference: exact Python integers, reduced to signed 64-bit."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=torch.int64)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            s = sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) % 2 ** 64
            out[i, j] = s - 2 ** 64 if s >= 2 ** 63 else s
    return out


def test_int64_matmul_wraps_mod_2_64():
    a, b = full_range(4, 7, seed=1), full_range(7, 3, seed=2)
    assert torch.equal(ring.bilinear("matmul", a, b), python_matmul_mod(a, b))


@pytest.mark.parametrize("op, a_shape, b_shape, kwargs", [
    ("matmul", (5, 9), (9, 4), {}),
    ("matmul", (2, 3, 5, 9), (9, 4), {}),
    ("conv2d", (2, 4, 7, 6), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
    ("conv2d", (1, 3, 8, 8), (2, 3, 2, 3), dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1))),
    ("conv2d", (1, 2, 5, 5), (2, 2, 3, 3), dict(padding="same")),
    ("conv1d", (2, 4, 9), (6, 2, 3), dict(stride=2, padding=1, groups=2)),
])
def test_limb_products_are_exact(op, a_shape, b_shape, kwargs):
    a, b = full_range(*a_shape, seed=3), full_range(*b_shape, seed=4)
    direct = {"matmul": torch.matmul, "conv2d": F.conv2d, "conv1d": F.conv1d}[op](a, b, **kwargs)
    assert torch.equal(ring.bilinear(op, a, b, **kwargs), direct)  # im2col path
    assert torch.equal(ring.limb_bilinear(op, a, b, **kwargs), direct)  # the CUDA path


def test_conv_shape_errors():
    with pytest.raises(ValueError, match="do not fit groups"):
        ring.conv2d_int64(torch.zeros(1, 3, 4, 4, dtype=torch.int64),
                          torch.zeros(2, 2, 3, 3, dtype=torch.int64), groups=2)
    with pytest.raises(ValueError, match="kernel larger"):
        ring.conv2d_int64(torch.zeros(1, 1, 2, 2, dtype=torch.int64),
                          torch.zeros(1, 1, 3, 3, dtype=torch.int64))


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 0.5, -0.5, 2 ** -16, -(2 ** -16), 3 * 2 ** -17,
                                   -3 * 2 ** -17, 12345.678, -12345.678, 1e13, -1e13])
def test_codec_round_trips_within_half_a_unit(value):
    t = torch.tensor([value], dtype=torch.float64)
    back = decode(encode(t, 16), 16, torch.float64)
    assert abs(float(back[0]) - value) <= 2 ** -17


def test_codec_negative_values_round_to_nearest():
    # CrypTen 0.4.1 decodes some negatives one unit too low; we must not.
    units = torch.arange(-1000, 1000, dtype=torch.int64)
    assert torch.equal(decode(units, 16, torch.float64) * 2 ** 16, units.double())
    assert int(encode(torch.tensor([-2.4 * 2 ** -16]), 16)) == -2
    assert int(encode(torch.tensor([-2.6 * 2 ** -16], dtype=torch.float64), 16)) == -3


def test_codec_range_is_enforced():
    limit = max_encodable(16)
    encode(torch.tensor([limit * 0.99], dtype=torch.float64), 16)
    with pytest.raises(ValueError, match="fixed-point range"):
        encode(torch.tensor([limit], dtype=torch.float64), 16)
    with pytest.raises(ValueError, match="integers of magnitude"):
        encode(torch.tensor([2 ** 50]), 16)
    with pytest.raises(ValueError, match="NaN"):
        encode(torch.tensor([float("inf")]), 16)


def test_codec_integers_and_bools():
    assert torch.equal(encode(torch.tensor([3, -2]), 16), torch.tensor([3 << 16, -2 << 16]))
    assert torch.equal(encode(torch.tensor([True, False]), 4), torch.tensor([16, 0]))
    assert encode(torch.zeros(0, 3), 16).shape == (0, 3)


def test_prg_is_deterministic_per_seed_and_stream():
    seed = new_seed()
    a, b = PRG(seed), PRG(seed)
    first = a.random_ring((3, 4))
    assert torch.equal(first, b.random_ring((3, 4)))
    assert torch.equal(a.random_ring((5,)), b.random_ring((5,)))
    assert not torch.equal(first, PRG(new_seed()).random_ring((3, 4)))
    assert not torch.equal(PRG(seed).derive("x").random_ring((4,)), PRG(seed).random_ring((4,)))


def test_prg_looks_uniform():
    bits = PRG(new_seed()).random_ring((200_000,))
    for shift in (0, 31, 63):  # each bit position is a fair coin
        ones = ((bits >> shift) & 1).double().mean().item()
        assert abs(ones - 0.5) < 0.01
    assert PRG(new_seed()).random_ring(()).shape == ()
    assert PRG(new_seed()).random_ring((0, 7)).shape == (0, 7)


def test_prg_seed_length():
    with pytest.raises(ValueError, match="16 bytes"):
        PRG(b"short")
