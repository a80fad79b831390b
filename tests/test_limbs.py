"""The GPU path's limb kernels (core/limbs.py) on every device of helpers.DEVICES (the
CPU, and the GPU where there is one): bit for bit equal to torch's int64 kernels on CPU
on random full-range words and on adversarial ones (every limb all ones) with the
reduction at each plan's bound and one past it."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from helpers import DEVICES
from mpc_ml.core import limbs, ring

on_devices = pytest.mark.parametrize("device", DEVICES)


def on(device, *tensors):
    """The tensors on device (CPU tensors stay the same objects)."""
    return [t.to(device) for t in tensors]


def same(got: torch.Tensor, expected: torch.Tensor, device: str) -> bool:
    """got was computed on device (and stayed there), and equals the CPU int64 result."""
    return got.device.type == torch.device(device).type and torch.equal(got.cpu(), expected)


def words(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2 ** 63, 2 ** 63 - 1, shape, generator=g, dtype=torch.int64)


def ones(*shape):
    return torch.full(shape, -1, dtype=torch.int64)  # every bit set: every limb 2^w - 1


@pytest.mark.parametrize("a_shape, b_shape", [
    ((5, 9), (9, 4)), ((2, 3, 5, 9), (9, 4)), ((9,), (9, 4)), ((5, 9), (9,)),
    ((1, 5, 600), (2, 600, 3)), ((3, 7), (2, 1, 7, 2)), ((9,), (9,)),
])
@on_devices
def test_matmul_is_exact(a_shape, b_shape, device):
    a, b = words(*a_shape, seed=1), words(*b_shape, seed=2)
    assert same(limbs.matmul(*on(device, a, b)), torch.matmul(a, b), device)


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 4, 7, 6), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
    ((1, 3, 8, 8), (2, 3, 2, 3), dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1))),
    ((2, 8, 5, 5), (8, 1, 3, 3), dict(padding=1, groups=8)),  # depthwise
    ((1, 70, 4, 4), (2, 70, 3, 3), dict(padding=1)),  # 630 terms: the 16-bit plan
])
@on_devices
def test_conv2d_and_its_gradients_are_exact(x_shape, w_shape, kw, device):
    x, w = words(*x_shape, seed=3), words(*w_shape, seed=4)
    out = ring.conv2d_int64(x, w, **kw)
    xd, wd = on(device, x, w)
    assert same(limbs.conv2d(xd, wd, **kw), out, device)
    g = words(*out.shape, seed=5)
    (gd,) = on(device, g)
    assert same(limbs.conv2d_input(gd, wd, x.shape, **kw),
                ring.conv2d_input_int64(g, w, input_shape=x.shape, **kw), device)
    assert same(limbs.conv2d_weight(xd, gd, w.shape, **kw),
                ring.conv2d_weight_int64(x, g, weight_shape=w.shape, **kw), device)


@on_devices
def test_conv1d_is_exact(device):
    x, w = words(2, 4, 9, seed=6), words(6, 2, 3, seed=7)
    kw = dict(stride=2, padding=1, groups=2)
    assert same(limbs.conv1d(*on(device, x, w), **kw), ring.conv1d_int64(x, w, **kw), device)


def test_the_plans_and_their_bounds():
    for width in (22, 16):
        k = limbs.max_reduction(width)
        assert k * (2 ** width - 1) ** 2 <= 2 ** 53 < (k + 1) * (2 ** width - 1) ** 2
    assert limbs.max_reduction(22) == 512 and limbs.max_reduction(16) == 2 ** 21 + 64
    small, large = limbs.limb_plan(512), limbs.limb_plan(513)
    assert (small.width, small.count, len(small.pairs)) == (22, 3, 6)
    assert (large.width, large.count, len(large.pairs)) == (16, 4, 10)
    assert all(small.width * (i + j) < 64 for i, j in small.pairs)


@on_devices
@pytest.mark.parametrize("k", [512, 513])
def test_all_ones_limbs_at_the_22_bit_bound_and_past_it(k, device):
    a, b = ones(3, k), ones(k, 2)
    assert same(limbs.matmul(*on(device, a, b)), torch.matmul(a, b), device)


@on_devices
@pytest.mark.parametrize("past", [0, 1])
def test_all_ones_limbs_at_the_16_bit_bound_and_past_it(past, device):
    k = limbs.max_reduction(16) + past
    a, b = ones(1, k), ones(k, 1)
    assert limbs.limb_plan(k).chunks(k) == 1 + past  # past the bound: split in two
    assert same(limbs.matmul(*on(device, a, b)), torch.matmul(a, b), device)


@on_devices
def test_all_ones_convolution_at_the_22_bit_bound(device):
    """A convolution whose reduction (channels x kernel) is exactly 512 terms of all-ones
    limbs: the device's float64 convolution (cuDNN's algorithm on a GPU) must sum exactly."""
    x, w = ones(1, 32, 6, 6), ones(2, 32, 4, 4)  # 32 * 4 * 4 = 512 terms
    assert same(limbs.conv2d(*on(device, x, w), padding=1),
                ring.conv2d_int64(x, w, padding=1), device)


@on_devices
def test_one_library_call_per_op(device):
    calls = {"matmul": 0, "conv2d": 0}
    real_matmul, real_conv = torch.matmul, F.conv2d

    def count_matmul(*a, **k):
        calls["matmul"] += 1
        return real_matmul(*a, **k)

    def count_conv(*a, **k):
        calls["conv2d"] += 1
        return real_conv(*a, **k)
    with mock.patch.object(torch, "matmul", count_matmul), mock.patch.object(F, "conv2d", count_conv):
        limbs.matmul(*on(device, words(4, 700), words(700, 3)))
        limbs.conv2d(*on(device, words(1, 3, 6, 6), words(4, 3, 3, 3)))
    assert calls == {"matmul": 1, "conv2d": 1}


def test_convolutions_on_cuda_run_with_cudnn_off():
    """cuDNN may choose FFT or Winograd convolutions, which round: the limb convolutions
    turn it off on CUDA (im2col and cuBLAS GEMMs are exact) and leave other devices be."""
    seen = []
    real = F.conv2d

    def recording(*args, **kwargs):
        seen.append(torch.backends.cudnn.enabled)
        return real(*args, **kwargs)

    x, w = words(1, 2, 5, 5, seed=1), words(3, 2, 3, 3, seed=2)
    with mock.patch.object(limbs.F, "conv2d", recording), \
            mock.patch.object(limbs, "exact_convolutions", wraps=limbs.exact_convolutions) as spy:
        assert torch.equal(limbs.conv2d(x, w, padding=1), ring.conv2d_int64(x, w, padding=1))
    assert seen == [torch.backends.cudnn.enabled] and spy.call_count == 1
    with limbs.exact_convolutions(torch.device("cuda")):
        assert not torch.backends.cudnn.enabled
    assert torch.backends.cudnn.enabled


def test_cudnn_stays_off_while_any_party_thread_is_inside():
    """Party threads (the inproc backend) overlap: cuDNN is restored only when the last
    limb convolution on CUDA has left, as it was before the first came in."""
    import threading

    inside, leave = threading.Event(), threading.Event()

    def other_party():
        with limbs.exact_convolutions(torch.device("cuda")):
            inside.set()
            leave.wait(10)

    before = torch.backends.cudnn.enabled
    thread = threading.Thread(target=other_party)
    thread.start()
    try:
        assert inside.wait(10)
        with limbs.exact_convolutions(torch.device("cuda:0")):
            assert not torch.backends.cudnn.enabled
        assert not torch.backends.cudnn.enabled, "one thread's exit turned cuDNN back on"
    finally:
        leave.set()
        thread.join(10)
    assert torch.backends.cudnn.enabled == before
