"""from_pytorch through torch.export (mpc_ml/nn/export.py): models written with current
torch and Hugging Face code, run privately, forward and backward, against torch."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as TF

import transformers

import mpc_ml as mpc
from helpers import enc
from mpc_ml.nn.export import ExportedModule

TOL = 2e-2  # relative to max(1, |torch's values|): fixed point and the approximations


def private_run(model: nn.Module, inputs: tuple, backward: bool = False, n: int = 2,
                provider: str = "tfp", private_inputs: bool = True):
    """(outputs, {parameter name: gradient of outputs.sum()}) of the converted model, with
    the weights from party 0 and the inputs from party 1 (integer inputs stay public)."""
    def party():
        net = mpc.nn.from_pytorch(model, inputs).encrypt(src=0)
        xs = [enc(x, 1) if private_inputs and x.is_floating_point() else x for x in inputs]
        if not backward:
            with mpc.no_grad():
                return net(*xs).decrypt(), {}
        out = net(*xs)
        out.sum().backward()
        return out.decrypt(), {k: p.grad.decrypt() for k, p in net.named_parameters()
                               if p.grad is not None}
    return mpc.run(party, world_size=n, provider=provider)[0]


def torch_run(model: nn.Module, inputs: tuple, backward: bool = False):
    model.zero_grad()
    out = model(*inputs)
    if backward:
        out.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_close(got, want, what: str, tol: float = TOL):
    scale = max(1.0, want.abs().max().item())
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def check(model: nn.Module, inputs: tuple, backward: bool = True, tol: float = TOL, **kw):
    model = model.eval()
    got, got_grads = private_run(model, inputs, backward, **kw)
    want, want_grads = torch_run(model, inputs, backward)
    assert_close(got, want, type(model).__name__, tol)
    for name, g in want_grads.items():
        assert name in got_grads, f"no gradient for {name}"
        assert_close(got_grads[name], g, f"gradient of {name}", tol)


def seeded(build):
    torch.manual_seed(0)
    return build()


# -- the models the issue found failing ----------------------------------------------------------
class FunctionalPoolRelu6(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x):
        return TF.relu6(torch.max_pool2d(self.conv(x), 2)).flatten(1)


class EmbedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.norm, self.head = nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.norm(self.emb(ids))).mean(1)


def test_functional_pool_and_relu6():
    check(seeded(FunctionalPoolRelu6), (torch.randn(2, 1, 8, 8),))


def test_embedding_and_layer_norm_with_public_token_ids():
    check(seeded(EmbedNorm), (torch.randint(0, 20, (2, 5)),))


def test_transformer_encoder():
    layer = seeded(lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True))
    model = seeded(lambda: nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
    check(model, (torch.randn(2, 4, 8),), backward=False)


def test_uninitialised_example_input_converts_and_checks_on_fresh_data():
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU())).eval()
    example = torch.empty(2, 4).fill_(float("nan"))
    converted = mpc.nn.from_pytorch(model, example)
    assert isinstance(converted, ExportedModule)
    x = torch.randn(2, 4)
    assert torch.allclose(converted(x), model(x))


def test_unsupported_operator_is_named_with_its_module_and_line():
    class CumulativeHead(nn.Module):
        def forward(self, x):
            return x.cumsum(-1)

    class UsesCumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = CumulativeHead()

        def forward(self, x):
            return self.head(x)

    with pytest.raises(NotImplementedError) as info:
        mpc.nn.from_pytorch(UsesCumsum(), torch.zeros(1, 3))
    message = str(info.value)
    assert "cumsum" in message and "'head'" in message and "CumulativeHead" in message, message
    assert "test_export.py" in message and "x.cumsum(-1)" in message, message


def test_unknown_tracer_is_refused():
    with pytest.raises(ValueError, match="tracer"):
        mpc.nn.from_pytorch(nn.Linear(2, 2), torch.zeros(1, 2), tracer="jit")


# -- coverage -------------------------------------------------------------------------------------
ACTIVATIONS = [nn.SiLU(), nn.Hardswish(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.5), nn.LeakyReLU(0.1),
               nn.GELU(), nn.GELU("tanh"), nn.ELU()]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: repr(a))
def test_activations_forward_and_backward(activation):
    model = seeded(lambda: nn.Sequential(nn.Linear(6, 5), activation, nn.Linear(5, 2)))
    check(model, (torch.randn(4, 6) * 2,))


class Attention(nn.Module):
    def __init__(self, causal: bool, mask: str | None):
        super().__init__()
        self.proj, self.causal, self.mask = nn.Linear(8, 24), causal, mask

    def forward(self, x):
        q, k, v = self.proj(x).view(2, 5, 2, 12).transpose(1, 2).split(4, -1)
        mask = None
        if self.mask == "bool":
            mask = torch.ones(5, 5, dtype=torch.bool).triu(1).logical_not()
        elif self.mask == "float":
            lowest = torch.finfo(torch.float32).min  # as models write masks
            mask = torch.zeros(5, 5).masked_fill(torch.eye(5, dtype=torch.bool), lowest)
        out = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return out.transpose(1, 2).reshape(2, 5, 8)


@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "bool"), (False, "float")])
def test_scaled_dot_product_attention(causal, mask):
    check(seeded(lambda: Attention(causal, mask)), (torch.randn(2, 5, 8),))


def test_multihead_attention():
    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.att(x, x, x, need_weights=False)[0]

    check(seeded(MHA), (torch.randn(2, 4, 8),))


def test_residual_cat_slice_mean_var():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(12, 4)

        def forward(self, x):
            h = x + self.a(x)
            h = torch.cat([h, x.flip(1) * 0.5], -1)[:, 1:]
            h = torch.cat([h, h[:, :1]], -1)
            return self.b(h) - h.mean(1, keepdim=True) + h.var(1, keepdim=True) * 0.1

    check(seeded(Mixed), (torch.randn(3, 6),))


class Recurrent(nn.Module):
    def __init__(self, kind: str, bidirectional: bool, layers: int):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(8 if bidirectional else 4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("kind,bidirectional,layers", [("lstm", False, 1), ("lstm", True, 2),
                                                       ("gru", False, 2), ("gru", True, 1)])
def test_lstm_and_gru(kind, bidirectional, layers):
    check(seeded(lambda: Recurrent(kind, bidirectional, layers)), (torch.randn(2, 3, 3),))


@pytest.mark.parametrize("dims,kw", [(2, dict(stride=2, padding=1, output_padding=1)),
                                     (2, dict(stride=1, padding=0, groups=2, dilation=2)),
                                     (1, dict(stride=3, padding=2))])
def test_conv_transpose(dims, kw):
    cls = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose1d
    model = seeded(lambda: nn.Sequential(cls(4, 6, 3, **kw), nn.Flatten()))
    check(model, (torch.randn(2, 4, *([5] * dims)),))


def test_grouped_depthwise_conv_group_norm_adaptive_pool():
    model = seeded(lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, groups=2, padding=1), nn.GroupNorm(2, 8),
        nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten()))
    check(model, (torch.randn(2, 4, 9, 9),))


class MaxOverDims(nn.Module):
    """torch.amax and torch.max(x, dim) spellings of a max over dims."""

    def forward(self, x):
        return torch.amax(x, dim=(2, 3)) + torch.max(x.flatten(2), dim=2)[0] * 0.5


@pytest.mark.parametrize("size", [(3, 2), (4, 4), 1])
def test_adaptive_max_pool_any_size(size):
    model = seeded(lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveMaxPool2d(size),
                                         nn.Flatten()))
    check(model, (torch.randn(2, 2, 9, 7),))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_convolutions_with_a_padding_mode(mode):
    """Conv1d / Conv2d(padding_mode=...) and F.pad in that mode (public re-indexings of
    the shares), forward and backward."""
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2 = nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode)
            self.conv1 = nn.Conv1d(3, 2, 3, padding="same", padding_mode=mode)

        def forward(self, x):
            y = self.conv2(nn.functional.pad(x, (1, 2, 2, 0), mode=mode))
            return self.conv1(y.flatten(2)[..., :12])

    check(seeded(Padded), (torch.randn(2, 2, 5, 6),))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_modes_match_torch_and_refuse_what_torch_refuses(mode):
    x = torch.randn(2, 3, 4, 5)

    def party():
        a = enc(x, 0)
        got = [a.pad((2, 1, 3, 0), mode).decrypt(), a[0].pad((1, 2), mode).decrypt(),
               a[0].pad((1, 1, 0, 2), mode).decrypt()]
        with pytest.raises(ValueError, match="pads must be"):
            a.pad((9, 0), mode) if mode != "replicate" else a.pad((-1, 0), mode)
        return got

    want = [nn.functional.pad(x, (2, 1, 3, 0), mode=mode), nn.functional.pad(x[0], (1, 2), mode=mode),
            nn.functional.pad(x[0:1], (1, 1, 0, 2), mode=mode)[0]]
    for got in mpc.run(party, 2, provider="tfp"):
        for g, w in zip(got, want):
            assert_close(g, w, f"{mode} pad", TOL)


class PoolsWithIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.adaptive = nn.AdaptiveMaxPool2d((2, 3), return_indices=True)

    def forward(self, x):
        y = self.conv(x)
        return (*self.pool(y), *self.adaptive(y), nn.functional.adaptive_max_pool2d(y, 2))


def test_pooling_indices_through_torch_export():
    """max_pool2d_with_indices and adaptive_max_pool2d's indices are passed on (private),
    as torch's."""
    model = seeded(PoolsWithIndices).eval()
    x = torch.randn(2, 2, 9, 7)

    def party():
        net = mpc.nn.from_pytorch(model, (x,), tracer="export").encrypt(src=0)
        with mpc.no_grad():
            return [o.decrypt() for o in net(enc(x, 1))]

    with torch.no_grad():
        want = model(x)
    for got in mpc.run(party, 2, provider="tfp"):
        for g, w in zip(got, want):
            if w.is_floating_point():
                assert_close(g, w, "pooled values", TOL)
            else:
                assert torch.equal(g.round().long(), w)


def test_pooling_indices_are_computed_once_and_only_where_read(monkeypatch):
    """A graph reading values and indices pools once, with indices; one reading only the
    values pools without them (indices cost comparisons)."""
    from mpc_ml.tensor.mpctensor import MPCTensor
    calls = []
    for name in ("max_pool2d", "_adaptive_max"):
        real = getattr(MPCTensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            position = 1 if _name == "_adaptive_max" else 5  # where return_indices goes
            wants = kwargs.get("return_indices", args[position] if len(args) > position else False)
            calls.append((_name, bool(wants)))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(MPCTensor, name, counting)

    class ValuesAndIndices(nn.Module):
        def forward(self, x):
            v, i = nn.functional.max_pool2d(x, 2, return_indices=True)
            return v.flatten(1) + i.flatten(1) * 0.0, nn.functional.adaptive_max_pool2d(x, 2)

    x = torch.randn(1, 2, 4, 4)

    def party():
        net = mpc.nn.from_pytorch(ValuesAndIndices(), (x,), tracer="export")
        with mpc.no_grad():
            return [o.decrypt() for o in net(enc(x, 1))]

    for got, want in zip(mpc.run(party, 2, provider="tfp")[0], ValuesAndIndices()(x)):
        assert_close(got, want, "pooled", TOL)
    assert sorted(calls) == [("_adaptive_max", False)] * 2 + [("max_pool2d", True)] * 2


def test_max_over_dims():
    model = seeded(lambda: nn.Sequential(nn.Conv2d(2, 3, 3), MaxOverDims()))
    check(model, (torch.randn(2, 2, 5, 5),))


def test_transformer_decoder_layer():
    layer = seeded(lambda: nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True))

    class Decode(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, tgt, memory):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            return self.layer(tgt, memory, tgt_mask=mask, tgt_is_causal=True)

    check(Decode(), (torch.randn(2, 4, 8), torch.randn(2, 5, 8)))


def test_private_token_ids_are_one_hot_products():
    model = seeded(EmbedNorm).eval()
    ids = torch.randint(0, 20, (2, 3))

    def party():
        net = mpc.nn.from_pytorch(model, ids).encrypt(src=0)
        private_ids = mpc.encrypt(ids.double() if mpc.rank() == 1 else None, src=1, shape=ids.shape)
        with mpc.no_grad():
            return net(private_ids).decrypt()
    got = mpc.run(party, world_size=2, provider="tfp")[0]
    assert_close(got, model(ids).detach(), "embedding of private ids")


# -- models defined by packages no one here wrote ---------------------------------------------------

class Logits(nn.Module):
    """A Hugging Face model called on token ids, returning its logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def test_hugging_face_bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16, num_labels=3)
    model = seeded(lambda: Logits(transformers.BertForSequenceClassification(cfg)))
    check(model, (torch.randint(0, 64, (1, 6)),), backward=False, tol=1e-2)


def test_hugging_face_gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    model = seeded(lambda: Logits(transformers.GPT2LMHeadModel(cfg)))
    check(model, (torch.randint(0, 64, (1, 6)),), backward=False, tol=1e-2)


class BasicBlock(nn.Module):
    """ResNet's basic block as torchvision writes it: conv-bn-relu-conv-bn, the shortcut
    a 1x1 conv-bn when the shape changes, relu of the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.layer1, self.layer2 = BasicBlock(4, 4, 1), BasicBlock(4, 8, 2)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, each conv-bn (relu6
    after the first two), a residual when the shapes match."""

    def __init__(self, c: int, expand: int):
        super().__init__()
        hidden = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


def _with_statistics(model: nn.Module, shape: tuple) -> nn.Module:
    """Batch-norm running statistics from a few batches, then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape))
    return model.eval()


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_zoo_convolutional(name):
    if name == "resnet":
        model, shape = seeded(TinyResNet), (2, 3, 12, 12)
    else:
        model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU6(),
                                             InvertedResidual(4, 2), nn.AdaptiveAvgPool2d(1),
                                             nn.Flatten(), nn.Linear(4, 2)))
        shape = (2, 3, 10, 10)
    check(_with_statistics(model, shape), (torch.randn(shape),), backward=False)


def test_relu_max_pool_ties_with_zero_get_no_gradient():
    """relu'(0) = 0: a window whose maximum is an exact 0 sends no gradient, as torch."""
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    x = torch.tensor([[[[0.0, -1.0], [-2.0, -3.0]], [[0.5, -1.0], [0.25, 0.0]]]])

    def party():
        xs = enc(x, 1)
        xs.requires_grad_()
        net = mpc.nn.from_pytorch(model, x)
        out = net(xs)
        out.sum().backward()
        return out.decrypt(), xs.grad.decrypt()

    got, grad = mpc.run(party, world_size=2, provider="tfp")[0]
    xt = x.clone().requires_grad_()
    want = model(xt)
    want.sum().backward()
    assert torch.allclose(got, want.detach()) and torch.equal(grad, xt.grad), (grad, xt.grad)


def test_converted_at_one_batch_size_runs_at_another():
    model = seeded(lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                                         nn.Flatten(), nn.Linear(36, 5))).eval()
    x = torch.randn(12, 1, 8, 8)

    def party():
        net = mpc.nn.from_pytorch(model, x[:2]).encrypt(src=0)
        with mpc.no_grad():
            return net(enc(x, 1)).decrypt()
    assert_close(mpc.run(party, world_size=2, provider="tfp")[0], model(x).detach(), "batch 12")
