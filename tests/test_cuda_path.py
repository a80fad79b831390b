"""Private computation end to end with every party's shares on a device of
helpers.DEVICES: on a CPU-only machine 'cpu' (so CI runs every test here), on a GPU
machine 'cuda' as well, where the shares, the correlations (Config(device=,
prg='chacha20')) and the limb kernels are on the GPU. A small matmul, conv2d and relu,
one training step's gradients, and a LeNet-like model (converted from torch, moved with
model.to) over tcp with the dealer, each against plaintext torch."""
import pytest
import torch
import torch.nn as tnn

import mpc_ml as mpc
from helpers import DEVICES, assert_near, randn

on_devices = pytest.mark.parametrize("device", DEVICES)
TOL = 1e-2  # relative to max(1, max |expected|), as helpers.assert_near takes it


def device_config(device: str) -> mpc.Config:
    """What a job on device runs with: its correlations made there, by the device PRG."""
    return mpc.Config(device=device, prg="chacha20")


def on(t, device: str) -> bool:
    """Whether a tensor (or an MPCTensor's share) lives on device."""
    data = t.share if isinstance(t, mpc.MPCTensor) else t
    return data.device.type == torch.device(device).type


class LeNetish(tnn.Module):
    """LeNet-5's layer kinds at a small size: conv-BN-relu-maxpool-conv-relu-avgpool-
    flatten-linear-relu-linear, on 1x12x12."""

    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(4, 6, 3), tnn.ReLU(), tnn.AvgPool2d(2))
        self.classifier = tnn.Sequential(tnn.Flatten(), tnn.Linear(6 * 2 * 2, 16), tnn.ReLU(),
                                         tnn.Linear(16, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def lenetish() -> tnn.Module:
    torch.manual_seed(7)
    model = LeNetish()
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
    return model.eval()


@on_devices
@pytest.mark.parametrize("provider", ["tfp", "dealer"])
def test_matmul_conv2d_relu_on_the_device(device, provider):
    x, w = randn(1, 8, 24), randn(2, 24, 5)
    images, kernel = randn(3, 2, 2, 7, 7), randn(4, 3, 2, 3, 3, scale=0.5)

    def party():
        a, b = mpc.encrypt(x, src=0, device=device), mpc.encrypt(w, src=1, device=device)
        im = mpc.encrypt(images, src=1, device=device)
        k = mpc.encrypt(kernel, src=0, device=device)
        outs = [a @ b, (a @ b).relu(), mpc.conv2d(im, k, stride=1, padding=1),
                mpc.conv2d(im, k, padding=1).relu()]
        placed = all(on(t, device) for t in (a, b, im, k, *outs))
        return [o.decrypt().cpu() for o in outs], placed

    conv = torch.nn.functional.conv2d(images, kernel, padding=1)
    want = [x @ w, (x @ w).relu(), conv, conv.relu()]
    for outs, placed in mpc.run(party, world_size=2, provider=provider,
                                config=device_config(device)):
        assert placed, f"a share left {device}"
        for got, expected, what in zip(outs, want, ["matmul", "relu(matmul)", "conv2d",
                                                    "relu(conv2d)"]):
            assert_near(got, expected, TOL, f"{what} on {device}")


@on_devices
def test_fss_comparisons_on_the_device(device):
    """comparison='fss' with the ChaCha20 tree PRG: the dealer's DCF keys are evaluated
    where the shares live, and every comparison is exact."""
    x = torch.cat([randn(5, 59, scale=20.0), torch.tensor([0.0, -2 ** -16, 2 ** -16, 1e4, -1e4])])

    def party():
        a = mpc.encrypt(x, src=0, device=device)
        outs = [a.relu()]  # one key request: a 63-level ChaCha tree is ~10^5 small ops
        placed = all(on(t, device) for t in (a, *outs))
        return [o.decrypt().cpu() for o in outs], placed

    r = torch.round(x * 2 ** 16) / 2 ** 16
    want = [r.relu()]
    config = device_config(device).replace(comparison="fss")
    for outs, placed in mpc.run(party, world_size=2, provider="dealer", config=config):
        assert placed, f"a share left {device}"
        for got, expected in zip(outs, want):
            assert torch.equal(got.to(expected.dtype), expected)


@on_devices
def test_a_training_step_on_the_device(device):
    """Gradients of a linear-relu-linear model under a cross-entropy loss, on the device."""
    torch.manual_seed(3)
    torch_model = tnn.Sequential(tnn.Linear(6, 5), tnn.ReLU(), tnn.Linear(5, 3)).double()
    x = randn(4, 4, 6)
    target = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).double()
    loss = torch.nn.functional.cross_entropy(torch_model(x), target)
    loss.backward()
    want = {name: p.grad.clone() for name, p in torch_model.named_parameters()}

    def party():
        model = mpc.nn.from_pytorch(torch_model, x).encrypt(src=0).to(device)
        xs = mpc.encrypt(x, src=1, device=device)
        ts = mpc.encrypt(target, src=1, device=device)
        out = mpc.nn.CrossEntropyLoss()(model(xs), ts)
        out.backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        placed = all(on(g, device) for g in grads.values())
        return out.decrypt().cpu(), {k: g.decrypt().cpu() for k, g in grads.items()}, placed

    for got_loss, grads, placed in mpc.run(party, world_size=2, provider="tfp",
                                           config=device_config(device)):
        assert placed, f"a gradient left {device}"
        assert_near(got_loss, loss.detach(), TOL, f"loss on {device}")
        assert set(grads) == set(want)
        for name, g in grads.items():
            assert_near(g, want[name], TOL, f"grad {name} on {device}")


def _lenet_party(device: str, torch_model, x):
    model = mpc.nn.from_pytorch(torch_model, x).encrypt(src=0).to(device)
    leaves = list(model.parameters()) + list(model.buffers())
    xs = mpc.encrypt(x if mpc.rank() == 1 else None, src=1, shape=x.shape, device=device)
    with mpc.no_grad():
        y = model(xs)
    placed = all(on(t, device) for t in [*leaves, xs, y])
    return y.decrypt().cpu(), placed


@on_devices
def test_lenet_like_inference_over_tcp_with_the_dealer(device):
    """Parties as processes, the dealer's correlations moved to the device on arrival,
    sends of device tensors staged through host memory."""
    torch_model = lenetish()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = torch_model.double()(x.double())
    for got, placed in mpc.run(_lenet_party, world_size=2, backend="tcp", provider="dealer",
                               args=(device, torch_model.float(), x),
                               config=device_config(device)):
        assert placed, f"a share left {device}"
        assert_near(got, want, TOL, f"LeNet-like logits on {device}")
