"""mpc_ml.nn and mpc_ml.optim against torch.nn and torch.optim.

Per layer: the same layer is built in torch.nn and mpc_ml.nn from the same arguments,
the torch layer's state is loaded into the mpc_ml one, its parameters are shared by
party 0 (model.encrypt(0)) and the input by party 1; the output, the input's gradient
and each parameter's gradient (for a random upstream gradient) are compared with torch
autograd, within `tol * max(1, max |torch value|)`. Then losses, Module bookkeeping,
from_pytorch (LeNet-5, an MLP, a ResNet-18-shaped network), optimizer steps and a short
training run. Torch models are built in the test and handed to mpc.run through args, so
every party thread sees the same torch object; from_pytorch conversions for the parties
happen in the test's thread (one copy per party) except in the test that calls it from
the party threads on purpose.
"""
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import assert_near, enc, rnd, seeded


# -- helpers --------------------------------------------------------------------------------------


def randomize(module: nn.Module, name: str) -> nn.Module:
    """Non-trivial affine parameters and running statistics for every batch norm."""
    with torch.no_grad():
        for i, m in enumerate(module.modules()):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.affine:
                    m.weight.copy_(rnd(f"{name}{i}w", n, lo=0.5, hi=1.5))
                    m.bias.copy_(rnd(f"{name}{i}b", n, lo=-0.3, hi=0.3))
                if m.track_running_stats:
                    m.running_mean.copy_(rnd(f"{name}{i}m", n, lo=-0.3, hi=0.3))
                    m.running_var.copy_(rnd(f"{name}{i}v", n, lo=0.5, hi=1.5))
    return module


# -- per layer: forward and backward against torch ------------------------------------------------
def _layer_party(spec, state, x, grad_out, train, private_grad):
    name, args, kwargs = spec
    layer = getattr(mpc.nn, name)(*args, **kwargs)
    layer.load_state_dict(state)
    layer.train(train)
    layer.encrypt(src=0)
    for pname, p in layer.named_parameters():
        assert isinstance(p, mpc.MPCTensor) and p.requires_grad, f"{pname} not a private leaf"
    xp = enc(x, 1).requires_grad_()
    out = layer(xp)
    out.backward(enc(grad_out, 0) if private_grad else grad_out)
    grads = {n: (p.grad.decrypt() if p.grad is not None else None)
             for n, p in layer.named_parameters()}
    result = (out.decrypt(), None if xp.grad is None else xp.grad.decrypt(), grads)
    layer.decrypt()
    return (*result, dict(layer.state_dict()))


def check_layer(spec, x, *, train=True, tol=1e-3, private_grad=False, world_size=2,
                prepare=None):
    """Run torch and mpc_ml versions of layer `spec` = (class name, args, kwargs)."""
    name, args, kwargs = spec
    torch_layer = getattr(nn, name)(*args, **kwargs)
    if prepare is not None:
        prepare(torch_layer)
    torch_layer.train(train)
    state = {k: v.detach().clone() for k, v in torch_layer.state_dict().items()}
    xt = x.clone().requires_grad_()
    expected = torch_layer(xt)
    grad_out = rnd(f"{name}{args}upstream", *expected.shape)
    expected.backward(grad_out)

    out, xg, grads, new_state = mpc.run(
        _layer_party, world_size=world_size, backend="inproc",
        args=(spec, state, x, grad_out, train, private_grad))[0]
    assert_near(out, expected, tol, f"{name} forward")
    assert_near(xg, xt.grad, tol, f"{name} input grad")
    torch_params = dict(torch_layer.named_parameters())
    assert set(grads) == set(torch_params), f"parameters {set(grads)} != torch's {set(torch_params)}"
    for pname, p in torch_params.items():
        assert_near(grads[pname], p.grad, tol, f"{name} grad of {pname}")
    torch_state = torch_layer.state_dict()
    assert list(new_state) == list(torch_state), "state_dict keys differ from torch's"
    for key, value in torch_state.items():
        if value.is_floating_point():
            assert_near(new_state[key], value, tol, f"{name} {key} after the forward")
        else:
            assert torch.equal(torch.as_tensor(new_state[key]), value), \
                f"{name} {key}: {new_state[key]} != torch's {value}"


def L(name, *args, **kwargs):
    return (name, args, kwargs)


def spec_id(spec) -> str:
    name, args, kwargs = spec
    return name + "(" + ",".join([str(a) for a in args]
                                 + [f"{k}={v}" for k, v in kwargs.items()]).replace(" ", "") + ")"


LAYERS = [
    # (spec, input shape, tolerance)
    (L("Linear", 6, 4), (5, 6), 1e-3),
    (L("Linear", 6, 4, bias=False), (5, 6), 1e-3),
    (L("Linear", 6, 3), (2, 3, 6), 1e-3),
    (L("Linear", 6, 3), (6,), 1e-3),
    (L("Conv2d", 3, 4, 3), (2, 3, 6, 6), 1e-3),
    (L("Conv2d", 4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 7, 7), 1e-3),
    (L("Conv2d", 2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False),
     (2, 2, 8, 7), 1e-3),
    (L("Conv2d", 4, 4, 3, padding=2, dilation=2, groups=4), (2, 4, 6, 6), 1e-3),
    (L("Conv2d", 4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 9, 9), 1e-3),
    (L("Conv2d", 3, 2, 3, padding="same"), (1, 3, 5, 5), 1e-3),
    (L("Conv1d", 4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 11), 1e-3),
    (L("Conv1d", 3, 2, 5, padding=4, dilation=2), (2, 3, 9), 1e-3),
    (L("Conv1d", 3, 4, 1, bias=False), (3, 3, 5), 1e-3),
    (L("ReLU"), (4, 5), 1e-3),
    (L("Sigmoid"), (4, 5), 1e-3),
    (L("Tanh"), (4, 5), 2e-3),
    (L("GELU"), (4, 5), 2e-3),
    (L("Softmax", dim=1), (4, 5), 2e-3),
    (L("Softmax", dim=-1), (2, 3, 4), 2e-3),
    (L("LogSoftmax", dim=1), (4, 5), 3e-3),
    (L("MaxPool2d", 2), (2, 3, 6, 6), 1e-3),
    (L("MaxPool2d", 3, stride=2, padding=1), (2, 2, 7, 7), 1e-3),
    (L("MaxPool2d", (2, 3), stride=(2, 1)), (1, 2, 6, 6), 1e-3),
    (L("MaxPool2d", 2, ceil_mode=True), (1, 2, 5, 5), 1e-3),
    (L("AvgPool2d", 2), (2, 3, 6, 6), 1e-3),
    (L("AvgPool2d", 3, stride=2, padding=1), (2, 2, 7, 7), 1e-3),
    (L("AvgPool2d", 3, stride=2, padding=1, count_include_pad=False), (2, 2, 7, 7), 1e-3),
    (L("AvgPool2d", 2, ceil_mode=True), (1, 2, 5, 5), 1e-3),
    (L("AdaptiveAvgPool2d", (1, 1)), (2, 3, 4, 4), 1e-3),
    (L("AdaptiveAvgPool2d", 2), (2, 3, 4, 6), 1e-3),
    (L("Flatten"), (2, 3, 2, 2), 1e-3),
    (L("Flatten", 0, 1), (2, 3, 4), 1e-3),
    (L("Identity"), (3, 4), 1e-3),
]


@pytest.mark.parametrize("spec,shape,tol", LAYERS,
                         ids=[f"{spec_id(s)}-{'x'.join(map(str, shape))}" for s, shape, _ in LAYERS])
def test_layer_forward_backward(spec, shape, tol):
    x = rnd(f"{spec}input", *shape, lo=-2.0, hi=2.0)
    check_layer(spec, x, tol=tol)


def test_linear_with_private_upstream_gradient():
    check_layer(L("Linear", 5, 3), rnd("lin-priv", 4, 5), private_grad=True)


BATCH_NORMS = [
    # (spec, input shape, train); inputs are offset and scaled so mean and variance matter
    (L("BatchNorm1d", 4), (8, 4), True),
    (L("BatchNorm1d", 3), (4, 3, 5), True),
    (L("BatchNorm2d", 3), (4, 3, 5, 5), True),
    (L("BatchNorm2d", 3, eps=1e-3, momentum=0.3, affine=False), (4, 3, 4, 4), True),
    (L("BatchNorm1d", 4), (8, 4), False),
    (L("BatchNorm2d", 3), (4, 3, 5, 5), False),
    (L("BatchNorm2d", 3, track_running_stats=False), (4, 3, 3, 3), False),
]


@pytest.mark.parametrize("spec,shape,train", BATCH_NORMS,
                         ids=[f"{spec_id(s)}-{'train' if t else 'eval'}" for s, _, t in BATCH_NORMS])
def test_batch_norm(spec, shape, train):
    """Batch statistics, running statistics (momentum, unbiased variance,
    num_batches_tracked) and gradients in train mode; running statistics in eval mode.
    1/sqrt(var + eps) is inv_sqrt's 1e-3 relative approximation (ERROR_BOUNDS), which the
    output and its gradients inherit, hence 3e-3."""
    x = rnd(f"{spec}bn", *shape, lo=-1.5, hi=2.5) * 1.5
    check_layer(spec, x, train=train, tol=3e-3, prepare=lambda m: randomize(m, str(spec)))


# -- dropout --------------------------------------------------------------------------------------
def test_dropout_eval_is_identity():
    check_layer(L("Dropout", 0.5), rnd("dropout-eval", 4, 6), train=False)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_dropout_train_mask(p):
    """Each element is either 0 or x / (1 - p), with one mask for all parties (a mask that
    differed between parties would mix shares and give neither); the gradient uses the
    same mask; two calls draw different masks."""
    sign = torch.where(rnd(f"drop-sign{p}", 20, 20) > 0, 1.0, -1.0)
    x = rnd(f"drop{p}", 20, 20, lo=0.5, hi=1.5) * sign
    grad_out = rnd(f"drop-g{p}", 20, 20, lo=0.5, hi=1.5)

    def party(x, grad_out):
        layer = mpc.nn.Dropout(p)
        assert layer.training
        xp = enc(x, 1).requires_grad_()
        out = layer(xp)
        out.backward(grad_out)
        again = layer(enc(x, 1))
        return out.decrypt(), xp.grad.decrypt(), again.decrypt()

    results = mpc.run(party, world_size=3, backend="inproc", args=(x, grad_out))
    out, grad, again = results[0]
    for other in results[1:]:
        assert torch.equal(other[0], out), "parties decrypted different dropout outputs"
    scaled = x / (1 - p)
    dropped = out.abs() <= 1e-3
    kept = (out - scaled).abs() <= 1e-3 * scaled.abs().clamp(min=1)
    assert bool((dropped | kept).all()), \
        f"{int((~(dropped | kept)).sum())} elements are neither 0 nor x/(1-p)"
    fraction = dropped.double().mean().item()
    assert abs(fraction - p) < 0.1, f"dropped fraction {fraction:.2f} for p={p}"
    assert_near(grad, torch.where(dropped, 0.0, grad_out / (1 - p)), 1e-3, "dropout gradient")
    assert not torch.equal(again.abs() <= 1e-3, dropped), "two dropout calls drew the same mask"


# -- losses ---------------------------------------------------------------------------------------
def _loss_party(name, kwargs, inp, target, target_src, target_grad):
    loss_fn = getattr(mpc.nn, name)(**kwargs)
    xp = enc(inp, 1).requires_grad_()
    t = enc(target, target_src) if target_src is not None else target
    if target_grad:
        t.requires_grad_()
    loss = loss_fn(xp, t)
    loss.backward(None if loss.numel() == 1 else torch.ones(loss.shape))
    return (loss.decrypt(), xp.grad.decrypt(),
            t.grad.decrypt() if target_grad and t.grad is not None else None)


def check_loss(name, inp, target, *, kwargs=None, target_src=None, target_grad=False, tol=1e-3):
    kwargs = kwargs or {}
    xt = inp.clone().requires_grad_()
    tt = target.clone().requires_grad_(target_grad)
    expected = getattr(nn, name)(**kwargs)(xt, tt)
    expected.backward(None if expected.numel() == 1 else torch.ones(expected.shape))
    loss, xg, tg = mpc.run(_loss_party, world_size=2, backend="inproc",
                           args=(name, kwargs, inp, target, target_src, target_grad))[0]
    assert_near(loss, expected, tol, f"{name} value")
    assert_near(xg, xt.grad, tol, f"{name} input grad")
    if target_grad:
        assert_near(tg, tt.grad, tol, f"{name} target grad")


def _labels(name, n, classes):
    return torch.randint(0, classes, (n,), generator=seeded(name))


def test_cross_entropy_class_indices():
    check_loss("CrossEntropyLoss", rnd("ce-idx", 8, 5, lo=-3, hi=3), _labels("ce-idx", 8, 5),
               tol=3e-3)


def test_cross_entropy_class_indices_sum():
    check_loss("CrossEntropyLoss", rnd("ce-sum", 6, 4, lo=-3, hi=3), _labels("ce-sum", 6, 4),
               kwargs={"reduction": "sum"}, tol=3e-3)


def test_cross_entropy_class_indices_extra_dims():
    check_loss("CrossEntropyLoss", rnd("ce-kd", 3, 4, 5, lo=-3, hi=3), _labels("ce-kd", 15, 4)
               .reshape(3, 5), tol=3e-3)


def test_cross_entropy_private_one_hot():
    labels = _labels("ce-hot", 8, 5)
    check_loss("CrossEntropyLoss", rnd("ce-hot", 8, 5, lo=-3, hi=3),
               F.one_hot(labels, 5).float(), target_src=0, tol=3e-3)


def test_cross_entropy_private_probabilities_with_target_grad():
    probs = rnd("ce-prob-t", 6, 4, lo=0.0, hi=1.0).softmax(1)
    check_loss("CrossEntropyLoss", rnd("ce-prob", 6, 4, lo=-3, hi=3), probs, target_src=0,
               target_grad=True, tol=3e-3)


def test_mse_private_target_with_target_grad():
    check_loss("MSELoss", rnd("mse-x", 4, 5, lo=-2, hi=2), rnd("mse-t", 4, 5, lo=-2, hi=2),
               target_src=0, target_grad=True)


def test_mse_public_target_reductions():
    x, t = rnd("mse2-x", 3, 4, lo=-2, hi=2), rnd("mse2-t", 3, 4, lo=-2, hi=2)
    check_loss("MSELoss", x, t, kwargs={"reduction": "sum"})
    check_loss("MSELoss", x, t, kwargs={"reduction": "none"})


def test_l1_private_target_with_target_grad():
    check_loss("L1Loss", rnd("l1-x", 4, 5, lo=-2, hi=2), rnd("l1-t", 4, 5, lo=-2, hi=2),
               target_src=0, target_grad=True)


def test_bce_on_probabilities():
    """p in (0.05, 0.95): log's and reciprocal's errors (ERROR_BOUNDS) bound the result."""
    p = rnd("bce-p", 4, 6, lo=0.05, hi=0.95)
    target = (rnd("bce-t", 4, 6) > 0).float()
    check_loss("BCELoss", p, target, tol=3e-3)
    check_loss("BCELoss", p, target, target_src=0, kwargs={"reduction": "sum"}, tol=3e-3)


def test_bce_with_logits():
    x = rnd("bcel-x", 4, 6, lo=-5, hi=5)
    target = (rnd("bcel-t", 4, 6) > 0).float()
    check_loss("BCEWithLogitsLoss", x, target, tol=2e-3)
    check_loss("BCEWithLogitsLoss", x, target, target_src=0, target_grad=True, tol=2e-3)


# -- Module bookkeeping ---------------------------------------------------------------------------
def _torch_small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def _mpc_small():
    return mpc.nn.Sequential(mpc.nn.Conv2d(2, 3, 3, padding=1), mpc.nn.BatchNorm2d(3),
                             mpc.nn.ReLU(), mpc.nn.Flatten(), mpc.nn.Linear(3 * 4 * 4, 5))


def test_module_parameters_names_and_modes():
    tm, m = _torch_small(), _mpc_small()
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in tm.named_parameters()]
    assert len(list(m.parameters())) == len(list(tm.parameters()))
    assert list(m.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in m.named_buffers()] == [n for n, _ in tm.named_buffers()]
    assert len(m) == 5 and isinstance(m[1], mpc.nn.BatchNorm2d)
    assert m.training and all(c.training for c in m.modules())
    assert m.eval() is m
    assert not any(c.training for c in m.modules())
    m.train()
    assert all(c.training for c in m.modules())


def test_load_state_dict_round_trip():
    tm = randomize(_torch_small(), "lsd")
    m = _mpc_small()
    m.load_state_dict(tm.state_dict())
    for key, value in tm.state_dict().items():
        assert torch.equal(m.state_dict()[key], value), key
    back = _torch_small()
    back.load_state_dict(m.state_dict())  # strict: the keys are torch's own
    x = rnd("lsd-x", 2, 2, 4, 4)
    assert torch.allclose(back.eval()(x), tm.eval()(x))
    missing = dict(tm.state_dict())
    missing.pop("4.bias")
    with pytest.raises(Exception, match="4.bias"):
        m.load_state_dict(missing)
    m.load_state_dict(missing, strict=False)


def test_encrypt_decrypt_round_trip():
    """Parties other than the model owner may hold other values: the owner's win."""
    tm = randomize(_torch_small(), "encdec")
    state = {k: v.clone() for k, v in tm.state_dict().items()}

    def party(state):
        m = _mpc_small()  # fresh random init, different on every party
        if mpc.rank() == 1:
            m.load_state_dict(state)
        assert not m.encrypted
        assert m.encrypt(src=1) is m and m.encrypted
        for n, p in m.named_parameters():
            assert isinstance(p, mpc.MPCTensor) and p.requires_grad, n
        for n, b in m.named_buffers():
            if n.endswith("num_batches_tracked"):
                assert isinstance(b, torch.Tensor), "an integer buffer was encrypted"
            else:
                assert isinstance(b, mpc.MPCTensor) and not b.requires_grad, n
        assert list(m.state_dict()) == list(state), "keys changed by encryption"
        assert m.decrypt() is m and not m.encrypted
        full = dict(m.state_dict())
        m.encrypt(src=0)
        m.decrypt(dst=0)
        return full, m[4].weight

    results = mpc.run(party, world_size=2, backend="inproc", args=(state,))
    for rank, (full, dst_only) in enumerate(results):
        for key, value in state.items():
            if value.is_floating_point():
                assert_near(full[key], value, 1e-4, f"party {rank} {key}")
            else:
                assert torch.equal(full[key], value), key
        if rank == 0:
            assert_near(dst_only, state["4.weight"], 1e-4, "decrypt(dst=0) on party 0")
        else:
            assert dst_only is None, "decrypt(dst=0) revealed to another party"


def test_user_module_with_residual_addition():
    """A user-defined mpc_ml Module subclass: attribute registration, a residual add."""
    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            y = F.relu(self.bn(self.conv(x)) + x)
            return self.fc(y.flatten(1))

    class MpcBlock(mpc.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = mpc.nn.Conv2d(2, 2, 3, padding=1)
            self.bn = mpc.nn.BatchNorm2d(2)
            self.fc = mpc.nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            y = (self.bn(self.conv(x)) + x).relu()
            return self.fc(y.flatten(1))

    torch.manual_seed(1)
    tm = randomize(TorchBlock(), "userblock")
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    x = rnd("userblock-x", 3, 2, 4, 4, lo=-2, hi=2)
    grad_out = rnd("userblock-g", 3, 3)

    def party(state, x, grad_out):
        m = MpcBlock()
        assert [n for n, _ in m.named_parameters()] == list(
            n for n in state if not n.startswith("bn.running") and "num_batches" not in n)
        m.load_state_dict(state)
        m.encrypt(0)
        xp = enc(x, 1).requires_grad_()
        out = m(xp)
        out.backward(grad_out)
        return out.decrypt(), xp.grad.decrypt(), {n: p.grad.decrypt() for n, p in m.named_parameters()}

    out, xg, grads = mpc.run(party, world_size=2, backend="inproc", args=(state, x, grad_out))[0]
    xt = x.clone().requires_grad_()
    expected = tm(xt)
    expected.backward(grad_out)
    assert_near(out, expected, 3e-3, "forward")
    assert_near(xg, xt.grad, 3e-3, "input grad")
    for n, p in tm.named_parameters():
        assert_near(grads[n], p.grad, 3e-3, f"grad of {n}")


def test_no_grad_model_forward_leaves_no_grads():
    def party():
        m = mpc.nn.Sequential(mpc.nn.Linear(4, 3), mpc.nn.ReLU(), mpc.nn.Linear(3, 2)).encrypt(0)
        with mpc.no_grad():
            out = m(enc(torch.ones(2, 4), 1))
        assert out.grad_fn is None and not out.requires_grad
        with pytest.raises(RuntimeError):
            out.sum().backward()
        return [p.grad for p in m.parameters()]

    assert mpc.run(party, world_size=2, backend="inproc")[0] == [None] * 4


def test_layers_take_torch_initial_values():
    for name, args in [("Linear", (5, 3)), ("Conv2d", (2, 4, 3)), ("Conv1d", (2, 3, 2)),
                       ("BatchNorm2d", (3,))]:
        torch.manual_seed(11)
        expected = getattr(nn, name)(*args).state_dict()
        torch.manual_seed(11)
        got = getattr(mpc.nn, name)(*args).state_dict()
        assert list(got) == list(expected), name
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{name}.{key}"


def test_parameter_grads_accumulate_across_batches():
    torch.manual_seed(12)
    tm = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    xs = [rnd("accum-a", 3, 5), rnd("accum-b", 4, 5)]

    def party(state, xs):
        m = mpc.nn.Sequential(mpc.nn.Linear(5, 4), mpc.nn.ReLU(), mpc.nn.Linear(4, 2))
        m.load_state_dict(state)
        m.encrypt(0)
        for x in xs:
            m(enc(x, 1)).sum().backward()
        grads = {n: p.grad.decrypt() for n, p in m.named_parameters()}
        m.zero_grad()
        assert all(p.grad is None for p in m.parameters())
        return grads

    grads = mpc.run(party, world_size=2, backend="inproc", args=(state, xs))[0]
    for x in xs:
        tm(x).sum().backward()
    for n, p in tm.named_parameters():
        assert_near(grads[n], p.grad, 1e-3, f"accumulated grad of {n}")


def test_private_model_public_data_and_public_model_private_data():
    """Either side may be plaintext: a private model on public inputs, a plaintext
    model on private inputs (gradients reach whatever is private)."""
    torch.manual_seed(13)
    tm = randomize(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4)), "pubpriv").eval()
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    x = rnd("pubpriv-x", 2, 2, 4, 4, lo=-2, hi=2)

    def build(state):
        m = mpc.nn.Sequential(mpc.nn.Conv2d(2, 3, 3, padding=1), mpc.nn.BatchNorm2d(3),
                              mpc.nn.ReLU(), mpc.nn.MaxPool2d(2), mpc.nn.Flatten(),
                              mpc.nn.Linear(12, 4))
        m.load_state_dict(state)
        return m.eval()

    def party(state, x):
        private_model = build(state).encrypt(0)
        out1 = private_model(x)
        out1.sum().backward()
        grads = {n: p.grad.decrypt() for n, p in private_model.named_parameters()}
        xp = enc(x, 1).requires_grad_()
        out2 = build(state)(xp)
        out2.sum().backward()
        return out1.decrypt(), grads, out2.decrypt(), xp.grad.decrypt()

    out1, grads, out2, xg = mpc.run(party, world_size=2, backend="inproc", args=(state, x))[0]
    xt = x.clone().requires_grad_()
    expected = tm(xt)
    expected.sum().backward()
    assert_near(out1, expected, 3e-3, "private model, public data")
    for n, p in tm.named_parameters():
        assert_near(grads[n], p.grad, 3e-3, f"grad of {n}")
    assert_near(out2, expected, 1e-3, "public model, private data")
    assert_near(xg, xt.grad, 1e-3, "input grad through a public model")


# -- from_pytorch ---------------------------------------------------------------------------------
class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    def __init__(self, sizes=(784, 32, 10)):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(sizes[0], sizes[1]), nn.ReLU(),
                                    nn.Linear(sizes[1], sizes[2]))

    def forward(self, x):
        return self.layers(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18's shape (stem, stages [2, 2, 2, 2], global pool, fc) at small widths."""

    def __init__(self, widths=(8, 16, 32, 64), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride),
                                                         BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _convert_per_party(torch_model, example, n=2):
    return [mpc.nn.from_pytorch(torch_model, example) for _ in range(n)]


def _private_forward(models, x):
    model = models[mpc.rank()]
    model.encrypt(src=0)
    with mpc.no_grad():
        out = model(enc(x, 1))
    return out.decrypt()


@pytest.mark.parametrize("make,shape", [
    (LeNet5, (2, 1, 28, 28)),
    (MLP, (3, 1, 28, 28)),
    (lambda: randomize(ResNet18(), "resnet"), (2, 3, 32, 32)),
], ids=["lenet5", "mlp", "resnet18"])
def test_from_pytorch_forward(make, shape):
    torch.manual_seed(3)
    tm = make().eval()
    x = rnd(f"fp{shape}", *shape, lo=0.0, hi=1.0)
    models = _convert_per_party(tm, x)
    assert list(models[0].state_dict()) == list(tm.state_dict()), "state_dict keys differ"
    for key, value in tm.state_dict().items():
        assert torch.equal(models[0].state_dict()[key], value), key
    with torch.no_grad():
        expected = tm(x)
        assert_near(models[0](x), expected, 1e-5, "converted model on plaintext")
    out = mpc.run(_private_forward, world_size=2, backend="inproc", args=(models, x))[0]
    assert_near(out, expected, 1e-2, "private forward")


def _loss_backward_party(models, x, labels):
    """One private cross-entropy forward and backward through this party's converted model:
    the loss, the parameters' gradients and the state afterwards, decrypted."""
    m = models[mpc.rank()].encrypt(0)
    loss = mpc.nn.CrossEntropyLoss()(m(enc(x, 1)), labels)
    loss.backward()
    grads = {n: p.grad.decrypt() for n, p in m.named_parameters()}
    return loss.decrypt(), grads, dict(m.decrypt().state_dict())


def _private_and_torch_backward(tm, x, labels):
    """The private loss, gradients and state after one cross-entropy backward through tm
    converted in each party, and torch's loss (its backward fills tm's .grad)."""
    models = _convert_per_party(tm, x)
    loss, grads, state = mpc.run(_loss_backward_party, world_size=2, backend="inproc",
                                 args=(models, x, labels))[0]
    expected = F.cross_entropy(tm(x), labels)
    expected.backward()
    return loss, grads, state, expected


def test_from_pytorch_backward_and_state_round_trip():
    """A converted model trains like any Module, and its state loads back into torch."""
    torch.manual_seed(4)
    tm = MLP((20, 8, 4))
    x = rnd("fp-mlp-x", 5, 20)
    labels = _labels("fp-mlp-y", 5, 4)
    loss, grads, state, expected = _private_and_torch_backward(tm, x, labels)
    assert_near(loss, expected, 3e-3, "loss")
    assert set(grads) == {n for n, _ in tm.named_parameters()}
    for n, p in tm.named_parameters():
        assert_near(grads[n], p.grad, 3e-3, f"grad of {n}")
    back = MLP((20, 8, 4))
    back.load_state_dict(state)
    for key, value in tm.state_dict().items():
        assert_near(back.state_dict()[key], value, 1e-4, key)


@pytest.mark.parametrize("make,shape", [
    (LeNet5, (2, 1, 28, 28)),
    (lambda: randomize(ResNet18(), "resnet-train"), (4, 3, 32, 32)),
], ids=["lenet5", "resnet18"])
def test_from_pytorch_train_mode_backward(make, shape):
    """Private training through converted models: the loss, the parameters' gradients
    and the batch-norm running statistics after one train-mode forward, as torch.

    LeNet-5's gradients are compared element by element. The train-mode ResNet's are not:
    its gradient is ill-conditioned (in torch itself, noise of 1e-4 added to each batch
    norm's output moves the whole gradient vector by about 5% and single batch-norm
    weight gradients by 15%, through ReLU/max-pool decisions that flip and sums that
    cancel), so it is held to 1e-2 element by element in the last layer and to 25% of the
    norm of the whole gradient vector; gross errors (a lost residual or downsample path,
    a wrong batch-norm backward) are far above that, and per-layer tests above hold each
    layer's gradient to 1e-3."""
    torch.manual_seed(15)
    tm = make().train()
    x = rnd(f"fp-train{shape}", *shape, lo=0.0, hi=1.0)
    labels = _labels(f"fp-train{shape}", shape[0], 10)
    loss, grads, state, expected = _private_and_torch_backward(tm, x, labels)
    assert_near(loss, expected, 1e-2, "loss")
    elementwise = [n for n, _ in tm.named_parameters()]
    if isinstance(tm, ResNet18):
        elementwise = ["fc.weight", "fc.bias"]
        flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
        ours = flat(grads[n] for n, _ in tm.named_parameters())
        theirs = flat(p.grad for _, p in tm.named_parameters())
        relative = ((ours - theirs).norm() / theirs.norm()).item()
        assert relative <= 0.25, f"gradient vector off by {relative:.3f} of its norm"
    for n, p in tm.named_parameters():
        if n in elementwise:
            assert_near(grads[n], p.grad, 1e-2, f"grad of {n}")
    for key, value in tm.state_dict().items():
        if value.is_floating_point():
            assert_near(state[key], value, 1e-2, key)
        else:
            assert torch.equal(state[key], value), key


def test_from_pytorch_train_mode_model_with_dropout():
    """A model converted for private training is in train mode and may contain Dropout;
    conversion must succeed and keep the modes (dropout randomness is no disagreement)."""
    torch.manual_seed(14)
    tm = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.BatchNorm1d(8),
                       nn.Linear(8, 3))
    assert tm.training
    converted = mpc.nn.from_pytorch(tm, rnd("fp-drop", 4, 6))
    assert converted.training and all(m.training for m in converted.modules())
    assert list(converted.state_dict()) == list(tm.state_dict())
    for key, value in tm.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), f"{key} changed by the check"


def test_from_pytorch_unsupported_function_names_op_and_node():
    class UsesSin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sin(self.fc(x))

    with pytest.raises(NotImplementedError) as info:
        mpc.nn.from_pytorch(UsesSin(), torch.zeros(1, 3))
    assert "sin" in str(info.value) and "node" in str(info.value)


def test_from_pytorch_unsupported_layer_names_it():
    class UsesPixelShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.shuffle = nn.PixelShuffle(2)

        def forward(self, x):
            return self.shuffle(x)

    with pytest.raises(NotImplementedError) as info:
        mpc.nn.from_pytorch(UsesPixelShuffle(), torch.zeros(1, 4, 2, 2))
    assert "PixelShuffle" in str(info.value) and "shuffle" in str(info.value)


def test_from_pytorch_in_every_party_thread():
    """DESIGN.md's usage: each party calls from_pytorch itself. With backend="inproc" the
    parties are threads of one interpreter, and torch.fx tracing patches
    torch.nn.Module.__call__/__getattr__ process-wide; the conversions must not
    interfere with each other, nor leave torch patched, nor leave the shared torch
    model's batch-norm statistics changed by their checks."""
    import torch.fx._symbolic_trace as fx_trace

    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    torch.manual_seed(5)
    tm = nn.Sequential(nn.BatchNorm1d(8),  # train mode: the check runs and restores it
                       *[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(30)])
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    x = rnd("fx-threads", 4, 8)

    def party(tm, x):
        for _ in range(20):
            mpc.nn.from_pytorch(tm, x, tracer="fx")
        return True

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a loaded machine would
    try:
        assert mpc.run(party, world_size=3, backend="inproc", args=(tm, x)) == [True] * 3
        assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_, \
            "torch.nn.Module left patched by concurrent fx tracing"
        for key, value in tm.state_dict().items():
            assert torch.equal(value, before[key]), f"the shared torch model's {key} changed"
    finally:  # keep the rest of the session usable whatever happened
        sys.setswitchinterval(interval)
        nn.Module.__call__, nn.Module.__getattr__ = call, getattr_
        fx_trace.CURRENT_PATCHER = None


# -- optimizers -----------------------------------------------------------------------------------
def _mlp_data(name, n=16):
    """A batch shaped like MNIST: 784 pixels in [0, 1], 10 classes."""
    return rnd(f"{name}-x", n, 784, lo=0.0, hi=1.0), _labels(f"{name}-y", n, 10)


def _torch_mlp(seed=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def _train_party(state, x, labels, opt_name, opt_kwargs, steps):
    m = mpc.nn.Sequential(mpc.nn.Linear(784, 32), mpc.nn.ReLU(), mpc.nn.Linear(32, 10))
    m.load_state_dict(state)
    m.encrypt(0)
    params = list(m.parameters())
    opt = getattr(mpc.optim, opt_name)(m.parameters(), **opt_kwargs)
    xp = enc(x, 1)
    target = enc(F.one_hot(labels, 10).float(), 1)  # private labels of the data owner
    snapshots, losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        assert all(p.grad is None for p in m.parameters())
        loss = mpc.nn.CrossEntropyLoss()(m(xp), target)
        loss.backward()
        opt.step()
        assert all(a is b for a, b in zip(params, m.parameters())), "step replaced a parameter"
        assert all(p.requires_grad and p.grad_fn is None for p in m.parameters())
        losses.append(loss.decrypt())
        snapshots.append({n: p.decrypt() for n, p in m.named_parameters()})
    return losses, snapshots


def check_training(opt_name, opt_kwargs, steps=2, world_size=2, tol=1e-2):
    tm = _torch_mlp()
    x, labels = _mlp_data(opt_name + str(opt_kwargs))
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    losses, snapshots = mpc.run(_train_party, world_size=world_size, backend="inproc",
                                args=(state, x, labels, opt_name, opt_kwargs, steps))[0]
    opt = getattr(torch.optim, opt_name)(tm.parameters(), **opt_kwargs)
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(tm(x), labels)
        loss.backward()
        opt.step()
        assert_near(losses[step], loss, 1e-2, f"loss at step {step + 1}")
        for n, p in tm.named_parameters():
            assert_near(snapshots[step][n], p, tol, f"{n} after step {step + 1}")
            # The updates are mostly below 1e-2, so hold them (since the start) to 6% of
            # their norm too: each variant differs from its neighbour (momentum, Nesterov,
            # weight decay, dampening) by 12% or more here, while a ReLU that flips on a
            # pre-activation within fixed-point error of 0 moves an update by 2-4% (3.7%
            # seen once in about fifty runs; fresh masks each run decide the rounding).
            update, expected = snapshots[step][n] - state[n], p.detach() - state[n]
            relative = ((update - expected).norm() / expected.norm()).item()
            assert relative <= 0.06, \
                f"{n}: update after step {step + 1} off by {relative:.3f} of its norm"


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=0.5),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True),
    dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.5),
], ids=["plain", "momentum", "momentum-wd", "nesterov", "nesterov-wd", "dampening-wd"])
def test_sgd_steps_match_torch(kwargs):
    check_training("SGD", kwargs)


def test_sgd_three_parties():
    check_training("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), world_size=3)


def test_adam_first_step_on_small_gradients():
    """Adam's first step is lr * g / (|g| + eps) per element: for gradients of 0.003 to 0.5
    (common in training) fixed point must still resolve g^2 (1 - beta2) and sqrt(v)."""
    g = torch.tensor([0.5, 0.1, 0.05, 0.02, 0.01, 0.003, -0.05, -0.2])
    w = rnd("adam-small", 8)

    def party(w, g):
        p = enc(w, 0).requires_grad_()
        (p * g).sum().backward()
        mpc.optim.Adam([p], lr=0.01, eps=1e-3).step()
        return p.decrypt()

    got = mpc.run(party, world_size=2, backend="inproc", args=(w, g))[0]
    t = w.clone().requires_grad_()
    (t * g).sum().backward()
    torch.optim.Adam([t], lr=0.01, eps=1e-3).step()
    assert_near(got - w, t.detach() - w, 1e-3, "Adam's first update (lr 0.01)")


def test_adam_steps_match_torch():
    """Two Adam steps on the MLP (lr 0.005: an update is at most about 2 lr, so 1e-2 holds
    any correct implementation whatever the sign of a tiny gradient)."""
    check_training("Adam", dict(lr=0.005, eps=1e-3))


def test_adam_weight_decay_steps_match_torch():
    check_training("Adam", dict(lr=0.005, eps=1e-3, weight_decay=0.5))


def test_training_reduces_loss():
    """A tiny classifier on two separable blobs: five SGD steps lower the loss, as in torch."""
    g = seeded("blobs")
    y = torch.randint(0, 2, (32,), generator=g)
    x = torch.randn(32, 4, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1)
    torch.manual_seed(7)
    tm = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    state = {k: v.clone() for k, v in tm.state_dict().items()}

    def party(state, x, y):
        m = mpc.nn.Sequential(mpc.nn.Linear(4, 8), mpc.nn.Tanh(), mpc.nn.Linear(8, 2))
        m.load_state_dict(state)
        m.encrypt(0)
        opt = mpc.optim.SGD(m.parameters(), lr=0.5)
        xp, target = enc(x, 1), enc(F.one_hot(y, 2).float(), 1)
        losses = []
        for _ in range(6):
            opt.zero_grad()
            loss = mpc.nn.CrossEntropyLoss()(m(xp), target)
            loss.backward()
            opt.step()
            losses.append(loss.decrypt().item())
        return losses

    losses = mpc.run(party, world_size=2, backend="inproc", args=(state, x, y))[0]
    opt = torch.optim.SGD(tm.parameters(), lr=0.5)
    expected = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(tm(x), y)
        loss.backward()
        opt.step()
        expected.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], f"loss did not fall: {losses}"
    assert_near(torch.tensor(losses), torch.tensor(expected), 1e-2, "loss curve vs torch")


def test_optimizer_needs_private_parameters():
    with pytest.raises(TypeError):
        mpc.optim.SGD(mpc.nn.Linear(2, 2).parameters(), lr=0.1)
