"""The device path on CPU tensors: with ring.on_host answering False (a device stub),
every host-only fast path is skipped, so whole protocols run as they would on a GPU
(limb kernels, ChaCha20 draws, bit packing in torch). A counter on host transfers
(Tensor.cpu, .numpy, .item, .tolist) then holds that nothing outside comm/, which stages
what it sends, moves data to the host."""
import collections
import traceback
from unittest import mock

import numpy as np
import pytest
import torch

import mpc_ml as mpc
from mpc_ml.core import ring
from mpc_ml.primitives import binary
from mpc_ml.tensor import BinaryTensor

HOST_TRANSFERS = ("cpu", "numpy", "item", "tolist")


class HostTransfers:
    """Counts host transfers by the mpc_ml module that asked for them."""

    def __init__(self):
        self.by_site = collections.Counter()
        self.originals = {name: getattr(torch.Tensor, name) for name in HOST_TRANSFERS}

    def _wrap(self, name):
        original = self.originals[name]

        def counted(tensor, *args, **kwargs):
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "/mpc_ml/" in frame.filename:
                    where = frame.filename.split("/mpc_ml/")[1]
                    self.by_site[(name, where, frame.name)] += 1
                    break
            return original(tensor, *args, **kwargs)
        return counted

    def __enter__(self):
        for name in HOST_TRANSFERS:
            setattr(torch.Tensor, name, self._wrap(name))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    def outside_comm(self):
        return {site: n for site, n in self.by_site.items() if not site[1].startswith("comm/")}


def test_bit_packing_on_the_device_path_matches_numpy():
    bits = torch.randint(0, 2, (1000 + 3,))
    host = binary.pack_bits(bits)
    with mock.patch.object(ring, "on_host", lambda t: False):
        device = binary.pack_bits(bits)
        assert torch.equal(binary.unpack_bits(device, bits.numel()), bits)
    assert torch.equal(device, host)
    assert torch.equal(host, torch.from_numpy(np.packbits(bits.to(torch.uint8).numpy())))


@pytest.mark.parametrize("provider", ["dealer", "tfp"])
def test_protocols_on_the_device_path_move_nothing_to_the_host(provider):
    x = torch.randn(6, 16, dtype=torch.float64)
    w = torch.randn(16, 5, dtype=torch.float64)
    images = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    kernel = torch.randn(3, 1, 3, 3, dtype=torch.float64)

    def party():
        a, b = mpc.encrypt(x, src=0), mpc.encrypt(w, src=1)
        im, k = mpc.encrypt(images, src=1), mpc.encrypt(kernel, src=0)
        with mock.patch.object(ring, "on_host", lambda t: False), HostTransfers() as seen:
            outs = [(a @ b).relu(), (a * a).sigmoid(), (a @ b).softmax(-1), a.exp(),
                    (a * a + 1).reciprocal(), a.max(dim=1)[0],
                    mpc.conv2d(im, k, padding=1).relu().max_pool2d(2)]
        return [o.decrypt() for o in outs], seen.outside_comm()

    want = [(x @ w).relu(), torch.sigmoid(x * x), torch.softmax(x @ w, -1), torch.exp(x),
            1 / (x * x + 1), x.max(dim=1)[0],
            torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
                images, kernel, padding=1)), 2)]
    for outs, transfers in mpc.run(party, world_size=2, provider=provider,
                                   config=mpc.Config(prg="chacha20")):
        assert transfers == {}, f"host transfers outside comm/: {transfers}"
        for got, expected in zip(outs, want):
            assert torch.allclose(got.double(), expected, atol=2e-3, rtol=2e-3)


def test_every_convolution_form_on_the_device_path_moves_nothing_to_the_host():
    """conv1d and conv2d with strides, padding, dilation and groups, both their gradients,
    and the transposed convolutions: all on the limb kernels, no host transfer."""
    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    x2, w2 = torch.randn(2, 4, 7, 7, generator=g), torch.randn(6, 2, 3, 3, generator=g)
    x1, w1 = torch.randn(2, 4, 9, generator=g), torch.randn(6, 2, 3, generator=g)
    t2, t1 = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, 3, generator=g)
    conv2 = dict(stride=2, padding=1, groups=2)
    conv1 = dict(padding=2, dilation=2, groups=2)
    transposed2, transposed1 = dict(stride=2, padding=1, output_padding=1), dict(stride=2, padding=1)

    def party():
        a2, k2, a1, k1 = (mpc.encrypt(t, src=i % 2) for i, t in enumerate((x2, w2, x1, w1)))
        for t in (a2, k2, a1, k1):
            t.requires_grad_(True)
        u2, u1 = mpc.encrypt(t2, src=1), mpc.encrypt(t1, src=1)
        with mock.patch.object(ring, "on_host", lambda t: False), HostTransfers() as seen:
            y2, y1 = mpc.conv2d(a2, k2, **conv2), mpc.conv1d(a1, k1, **conv1)
            (y2.sum() + y1.sum()).backward()
            z2 = mpc.nn.functional.conv_transpose2d(a2, u2, **transposed2)
            z1 = mpc.nn.functional.conv_transpose1d(a1, u1, **transposed1)
        outs = [y2, y1, a2.grad, k2.grad, a1.grad, k1.grad, z2, z1]
        return [o.decrypt() for o in outs], seen.outside_comm()

    leaves = [t.clone().requires_grad_() for t in (x2, w2, x1, w1)]
    y2, y1 = F.conv2d(*leaves[:2], **conv2), F.conv1d(*leaves[2:], **conv1)
    (y2.sum() + y1.sum()).backward()
    want = [y2, y1, *(t.grad for t in leaves), F.conv_transpose2d(x2, t2, **transposed2),
            F.conv_transpose1d(x1, t1, **transposed1)]
    for outs, transfers in mpc.run(party, world_size=2, provider="tfp",
                                   config=mpc.Config(prg="chacha20")):
        assert transfers == {}, f"host transfers outside comm/: {transfers}"
        for got, expected in zip(outs, want):
            assert got.shape == expected.shape
            assert torch.allclose(got, expected.detach(), atol=1e-3)


def test_fss_comparisons_on_the_device_path_move_nothing_to_the_host():
    """comparison='fss' with prg='chacha20': the DCF keys' tree PRG is ChaCha20 in torch
    ops, so evaluating them stays on the shares' device (with 'aes' it is the host's)."""
    x = torch.cat([torch.randn(40, dtype=torch.float64) * 10, torch.tensor([0.0, -2 ** -16, 2 ** -16])])

    def party():
        a = mpc.encrypt(x, src=0)
        with mock.patch.object(ring, "on_host", lambda t: False), HostTransfers() as seen:
            outs = [a.relu(), a > 1.5, a.reshape(43, 1).max(dim=1)[0]]
        return [o.decrypt() for o in outs], seen.outside_comm()

    r = torch.round(x * 2 ** 16) / 2 ** 16
    want = [torch.relu(r), (r > 1.5).double(), r]
    config = mpc.Config(prg="chacha20", comparison="fss")
    for outs, transfers in mpc.run(party, world_size=2, provider="dealer", config=config):
        assert transfers == {}, f"host transfers outside comm/: {transfers}"
        for got, expected in zip(outs, want):
            assert torch.equal(got.double(), expected)


# (name, private op, torch reference): the rest of the op surface, on the device path
SWEEP = [
    ("log", lambda a: (a * a + 1).log(), lambda x: (x * x + 1).log()),
    ("sqrt", lambda a: (a * a + 1).sqrt(), lambda x: (x * x + 1).sqrt()),
    ("inv_sqrt", lambda a: (a * a + 1).inv_sqrt(), lambda x: (x * x + 1).rsqrt()),
    ("tanh", lambda a: a.tanh(), torch.tanh),
    ("gelu", lambda a: a.gelu(), torch.nn.functional.gelu),
    ("erf", lambda a: a.erf(), torch.erf),
    ("div", lambda a: a / (a * a + 1), lambda x: x / (x * x + 1)),
    ("cos", lambda a: a.cos(), torch.cos),
    ("log_softmax", lambda a: a.log_softmax(-1), lambda x: x.log_softmax(-1)),
    ("abs", lambda a: a.abs(), torch.abs),
    ("clamp", lambda a: a.clamp(-0.5, 0.5), lambda x: x.clamp(-0.5, 0.5)),
    ("eq", lambda a: a == a, lambda x: torch.ones_like(x)),
    ("argmax", lambda a: a.argmax(dim=1), lambda x: x.argmax(dim=1)),
    ("var", lambda a: a.var(), lambda x: x.var()),
    ("pow", lambda a: a.pow(3), lambda x: x.pow(3)),
    ("cumsum", lambda a: a.cumsum(1), lambda x: x.cumsum(1)),
    ("avg_pool", lambda a: a.reshape(1, 2, 4, 4).avg_pool2d(2),
     lambda x: torch.nn.functional.avg_pool2d(x.reshape(1, 2, 4, 4), 2)),
    ("adaptive_max", lambda a: a.reshape(1, 2, 4, 4).adaptive_max_pool2d(3),
     lambda x: torch.nn.functional.adaptive_max_pool2d(x.reshape(1, 2, 4, 4), 3)),
    ("binary and", lambda a: (BinaryTensor.from_arithmetic(a) & BinaryTensor.from_arithmetic(a))
     .to_arithmetic(), lambda x: x),
    ("rand", lambda a: mpc.rand(4, 8), None),
]


def test_the_rest_of_the_op_surface_and_a_training_step_move_nothing_to_the_host():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.LayerNorm(3), torch.nn.ReLU(),
                              torch.nn.Linear(3, 2))
    target = torch.eye(2, dtype=torch.float64)[torch.tensor([0, 1, 1, 0])]

    def party():
        a, y = mpc.encrypt(x, src=0), mpc.encrypt(target, src=1)
        model = mpc.nn.from_pytorch(net, x.float()).encrypt(src=0)
        optimizer = mpc.optim.Adam(model.parameters(), lr=0.01)
        with mock.patch.object(ring, "on_host", lambda t: False), HostTransfers() as seen:
            outs = [op(a) for _, op, _ in SWEEP]
            loss = mpc.nn.CrossEntropyLoss()(model(a), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return [o.decrypt() for o in outs], loss.decrypt(), seen.outside_comm()

    with torch.no_grad():
        want_loss = torch.nn.functional.cross_entropy(net(x.float()).double(), target)
    for outs, loss, transfers in mpc.run(party, world_size=2, provider="dealer",
                                         config=mpc.Config(prg="chacha20")):
        assert transfers == {}, f"host transfers outside comm/: {transfers}"
        for (name, _, reference), got in zip(SWEEP, outs):
            if reference is None:  # rand: uniform on [0, 1)
                assert got.shape == (4, 8) and bool(((got >= 0) & (got < 1)).all()), name
            else:
                want = reference(x).double()
                assert torch.allclose(got.double(), want, atol=2e-2, rtol=2e-2), name
        assert abs(float(loss) - float(want_loss)) < 2e-2


def test_a_model_moves_with_to_and_keeps_its_leaves():
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3).eval())
    x = torch.randn(5, 4)

    def party():
        model = mpc.nn.from_pytorch(torch_model, x).encrypt(src=0)
        first = next(iter(model.parameters()))
        moved = model.to("cpu")
        same_leaf = next(iter(moved.parameters())) is first and first.requires_grad
        with mpc.no_grad():
            out = moved(mpc.encrypt(x, src=1)).decrypt()
        return out, same_leaf

    for out, same_leaf in mpc.run(party, world_size=2, provider="tfp"):
        assert same_leaf
        assert torch.allclose(out, torch_model(x).detach(), atol=1e-3)


@pytest.mark.parametrize("request_", [
    dict(kind="triple", op="matmul", a_shape=[4, 6], b_shape=[6, 3], kwargs={}),
    dict(kind="triple", op="conv2d", a_shape=[1, 2, 5, 5], b_shape=[3, 2, 3, 3],
         kwargs={"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}),
    dict(kind="btriple", shape=[40]),
])
def test_providers_make_correlations_on_the_configured_device(request_):
    """Config.device: the draws and tfp's products come out on that device ('meta' here: a
    device with no data, so any host copy on the way would fail)."""
    from mpc_ml.core.prg import PRG
    from mpc_ml.providers.base import CorrelationGenerator, draw_shares, make_request

    request = make_request(request_.pop("kind"), **request_)
    streams = [PRG(bytes([r]) * 16, "chacha20") for r in range(3)]
    free, derived = draw_shares(streams[1], request, with_derived=True, rank=1, device="meta")
    mine, corrections, *_ = CorrelationGenerator(streams, 0, device="meta").generate(request)
    for t in [*free, *derived, *mine, *corrections]:
        assert t.device.type == "meta" and t.dtype == torch.int64


def test_config_device_reaches_the_provider_and_the_values_hold():
    from mpc_ml.session import current
    x = torch.randn(4, 4, dtype=torch.float64)

    def party():
        a = mpc.encrypt(x, src=0)
        return (a @ a).relu().decrypt(), current().provider.device

    for provider in ("dealer", "tfp"):
        config = mpc.Config(device="cpu:0", prg="chacha20")
        for got, device in mpc.run(party, world_size=2, provider=provider, config=config):
            assert torch.allclose(got, (x @ x).relu(), atol=1e-3)
            assert device == torch.device("cpu:0")


@pytest.mark.parametrize("pinning", ["pinned", "no pinned memory left", "not asked"])
def test_a_link_bound_for_a_cuda_device_receives_into_pinned_memory(monkeypatch, pinning):
    """Link.receive_for a CUDA device: every tensor payload, small or read in growing
    chunks, lands in a page-locked buffer made under that device (recorded here: this
    CPU-only torch cannot pin); where pinning fails the payload still arrives, pageable,
    and nothing is blamed on the peer."""
    from helpers import link_pair
    from mpc_ml.comm import frames, tcp

    asked = []

    def pinned_tensor(shape, dtype, device):
        asked.append(device)
        return torch.empty(shape, dtype=dtype) if pinning == "pinned" else None

    monkeypatch.setattr(frames, "pinned_tensor", pinned_tensor)
    a, b = link_pair(max_frame_bytes=1 << 24)
    b.receive_for("cpu" if pinning == "not asked" else "cuda:1")
    try:
        small, large = torch.arange(10), torch.arange(tcp.GROW_START // 8 * 3)
        for t in (small, large, torch.zeros(0, 3)):
            a.send(t)
            assert torch.equal(b.recv(10.0), t)
    finally:
        a.close()
        b.close()
    assert asked == ([] if pinning == "not asked" else [torch.device("cuda:1")] * 2)


def test_sessions_pin_for_their_device_keep_received_tensors_on_the_host_and_refuse_a_missing_gpu():
    """Received tensors stay host tensors (control bytes such as the dealer agreement's
    are read there; shares move where they are used), so a dealer session starts on a
    device with no host view ('meta'); a CUDA device this torch does not have is refused
    when the session starts, not at the first pinned receive."""
    from helpers import link_pair
    from mpc_ml.comm.base import Communicator

    a, b = link_pair()
    try:
        comm = Communicator(0, 2, {1: a}, timeout=1.0)
        comm.receive_for("cuda:0")
        assert a.pinned_for == torch.device("cuda:0")
        comm.receive_for("cpu")
        assert a.pinned_for is None
    finally:
        a.close()
        b.close()
    assert mpc.run(mpc.rank, world_size=2, provider="dealer",
                   config=mpc.Config(device="meta")) == [0, 1]
    with pytest.raises(mpc.PartyError, match=r"Config.device 'cuda:99': this process's torch sees"):
        mpc.run(mpc.rank, world_size=2, config=mpc.Config(device="cuda:99"))

