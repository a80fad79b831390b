"""The benchmark rows: for every operation and model row its seeded inputs (full size
and --quick), the operation (as tensor methods, so the same code runs on mpc_ml's and
on CrypTen's private tensors) and the plaintext torch run; the torch models.

Imports torch and the standard library only, never mpc_ml: crypten_runner.py reads the
rows from here inside CrypTen's own virtualenv (tests/test_bench_imports.py holds this).
The error bounds of the rows live on the mpc_ml side (ops.py, from
mpc_ml.primitives.approximations.ERROR_BOUNDS).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as tnn
import torch.nn.functional as F

TRUNCATIONS = ("exact", "local")
LR = 0.1  # the SGD learning rate of the training-step rows


# -- inputs ---------------------------------------------------------------------------------
def _generated(make_one: Callable, shapes: tuple) -> Callable[[], tuple]:
    def make() -> tuple:
        g = torch.Generator().manual_seed(0)
        return tuple(make_one(s, g) for s in shapes)
    return make


def randn(*shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded standard normal float32 tensors of these shapes."""
    return _generated(lambda s, g: torch.randn(s, generator=g), shapes)


def uniform(lo: float, hi: float, *shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded float32 tensors uniform on [lo, hi)."""
    return _generated(lambda s, g: lo + (hi - lo) * torch.rand(s, generator=g), shapes)


def log_uniform(lo: float, hi: float, *shapes: tuple) -> Callable[[], tuple]:
    """make-inputs: seeded float32 tensors whose log is uniform on [log lo, log hi)."""
    a, b = math.log(lo), math.log(hi)
    return _generated(lambda s, g: torch.exp(a + (b - a) * torch.rand(s, generator=g)), shapes)


def batch_with_targets(shape: tuple, classes: int) -> Callable[[], tuple]:
    """make-inputs: seeded inputs of this shape uniform on [0, 1) and one-hot float targets
    for its first dimension."""
    def make() -> tuple:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(shape, generator=g)
        labels = torch.randint(classes, (shape[0],), generator=g)
        return x, F.one_hot(labels, classes).to(torch.float32)
    return make


# -- operations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One benchmarked operation. Input i is private to party i % (number of parties)."""

    name: str
    full: Callable[[], tuple]   # make-inputs at benchmark size
    quick: Callable[[], tuple]  # make-inputs for --quick
    private: Callable           # on private tensors (their torch-like methods)
    plain: Callable             # on torch tensors
    size: str | None = None     # the size in the name ("1e6"), for --sizes
    truncations: tuple = TRUNCATIONS  # the truncation methods this row runs under

    @property
    def family(self) -> str:
        """The name without its size: what `--ops relu` selects."""
        if self.size and self.name.endswith(self.size):
            return self.name[:-len(self.size)]
        return self.name

    def inputs(self, quick: bool) -> tuple:
        return (self.quick if quick else self.full)()


def _nonlinear(family: str, private: Callable, plain: Callable, inputs: Callable) -> list[Op]:
    """Rows FAMILY1e5 and FAMILY1e6 (--quick: 10^3 and 10^4 values), exact truncation.

    inputs(n) makes the make-inputs for n values.
    """
    return [Op(f"{family}{size}", inputs(full), inputs(quick), private, plain, size=size,
               truncations=("exact",))
            for size, full, quick in (("1e5", 10**5, 10**3), ("1e6", 10**6, 10**4))]


SOFTMAX_WIDTH = 10  # softmax rows take rows of 10 logits: 10^5 values = 10^4 rows


def _softmax_rows(n: int) -> Callable[[], tuple]:
    return uniform(-10, 10, (n // SOFTMAX_WIDTH, SOFTMAX_WIDTH))


# The rows of benchmarks/ops.py, in its order.
OPS = [
    Op("matmul256", randn((256, 256), (256, 256)), randn((32, 32), (32, 32)),
       operator.matmul, torch.matmul, size="256"),
    Op("matmul1024", randn((1024, 1024), (1024, 1024)), randn((64, 64), (64, 64)),
       operator.matmul, torch.matmul, size="1024"),
    Op("mul1e6", randn((10**6,), (10**6,)), randn((10**4,), (10**4,)),
       operator.mul, torch.mul, size="1e6"),
    Op("conv2d", randn((32, 64, 32, 32), (64, 64, 3, 3)), randn((2, 8, 8, 8), (8, 8, 3, 3)),
       lambda x, w: x.conv2d(w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    *_nonlinear("relu", lambda x: x.relu(), torch.relu, lambda n: uniform(-1e4, 1e4, (n,))),
    *_nonlinear("sigmoid", lambda x: x.sigmoid(), torch.sigmoid,
                lambda n: uniform(-10, 10, (n,))),
    *_nonlinear("exp", lambda x: x.exp(), torch.exp, lambda n: uniform(-8, 8, (n,))),
    *_nonlinear("reciprocal", lambda x: x.reciprocal(), torch.reciprocal,
                lambda n: log_uniform(0.1, 100, (n,))),
    *_nonlinear("softmax", lambda x: x.softmax(-1), lambda x: torch.softmax(x, -1),
                _softmax_rows),
]
# Operation rows that only the suite (suite.py) runs.
SUITE_OPS = [
    Op("max1e5", uniform(-10, 10, (10**4, 10)), uniform(-10, 10, (100, 10)),
       lambda x: x.max(-1)[0], lambda x: x.max(-1)[0], size="1e5", truncations=("exact",)),
]
ALL_OPS = {op.name: op for op in OPS + SUITE_OPS}


# -- the torch models -----------------------------------------------------------------------
class LeNet5(tnn.Module):
    """LeNet-5 on 1x28x28: conv(1,6,5,pad 2)-relu-maxpool2-conv(6,16,5)-relu-maxpool2-
    flatten-fc120-relu-fc84-relu-fc10."""

    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2))
        self.classifier = tnn.Sequential(
            tnn.Flatten(), tnn.Linear(16 * 5 * 5, 120), tnn.ReLU(), tnn.Linear(120, 84),
            tnn.ReLU(), tnn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(tnn.Module):
    """3x3 conv-BN-relu-3x3 conv-BN, plus the identity or a 1x1 conv-BN downsample; relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                             tnn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(tnn.Module):
    """ResNet-18's shape for 32x32 inputs: a 3x3 stem conv (no max pool), stages of
    [2, 2, 2, 2] BasicBlocks at `widths` (strides 1, 2, 2, 2), adaptive avg pool, fc."""

    def __init__(self, widths=(64, 128, 256, 512), num_classes: int = 10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, width, 2 if i and not j else 1))
                cin = width
        self.layers = tnn.Sequential(*blocks)
        self.pool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def _seeded(make: Callable[[], tnn.Module], seed: int) -> tnn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def _with_running_stats(model: tnn.Module, input_shape: tuple, seed: int) -> tnn.Module:
    """Eval mode with non-trivial batch-norm state: random affine parameters, running
    statistics averaged over a few random batches (so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, tnn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0.0, 0.2, generator=g)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average while calibrating
        model.train()
        for _ in range(4):
            model(torch.randn(8, *input_shape, generator=g))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def lenet5(quick: bool) -> tnn.Module:
    return _seeded(LeNet5, 1).eval()


RESNET_WIDTHS = {False: (64, 128, 256, 512), True: (4, 8, 8, 16)}
RESNET_INPUT = {False: (3, 32, 32), True: (3, 16, 16)}


def resnet18(quick: bool) -> tnn.Module:
    model = _seeded(lambda: ResNet18(RESNET_WIDTHS[quick]), 2)
    return _with_running_stats(model, RESNET_INPUT[quick], 3)


def mlp(quick: bool) -> tnn.Module:
    return _seeded(lambda: tnn.Sequential(tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10)),
                   4)


class EmbeddedBert(tnn.Module):
    """A Hugging Face BERT classifier called on embedded tokens (the client's private
    hidden states, batch x sequence x hidden), returning its logits."""

    def __init__(self, model: tnn.Module):
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=hidden).logits


BERT_SHAPES = {False: dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072),
               True: dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128)}


def bert_base(quick: bool) -> tnn.Module:
    """BERT-base's shape (--quick: 2 layers of hidden 64) from a config, random weights
    (nothing is downloaded), 2 classes, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**BERT_SHAPES[quick], max_position_embeddings=512, num_labels=2)
    return _seeded(lambda: EmbeddedBert(BertForSequenceClassification(config)), 5).eval()


class NextTokenGPT2(tnn.Module):
    """A Hugging Face GPT-2 language model called on an embedded prompt (the client's
    private hidden states, batch x sequence x hidden), returning the next token's logits
    (one token of generation: the LM head runs on the last position only)."""

    def __init__(self, model: tnn.Module):
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=hidden, use_cache=False, logits_to_keep=1).logits[:, -1]


GPT2_SHAPES = {False: dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
               True: dict(n_embd=64, n_layer=2, n_head=2, vocab_size=512)}


def gpt2_small(quick: bool) -> tnn.Module:
    """GPT-2 small's shape (--quick: 2 layers of width 64) from a config, random weights
    (nothing is downloaded), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**GPT2_SHAPES[quick], n_positions=1024, bos_token_id=0, eos_token_id=0)
    return _seeded(lambda: NextTokenGPT2(GPT2LMHeadModel(config)), 6).eval()


def _resnet_label(quick: bool) -> str:
    return "ResNet-18 (widths " + "/".join(map(str, RESNET_WIDTHS[quick])) + ")"


# -- model rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    """One benchmarked model run: private inference, or one training step."""

    name: str
    model: str                     # what the table's model column says
    build: Callable[[bool], tnn.Module]   # quick -> the seeded torch model
    full: Callable[[], tuple]      # make-inputs at benchmark size: (x,) or (x, one-hot)
    quick: Callable[[], tuple]     # make-inputs for --quick
    train: bool = False            # one SGD step on CrossEntropyLoss instead of inference
    quick_model: str | None = None  # the model column under --quick, where it differs

    def inputs(self, quick: bool) -> tuple:
        return (self.quick if quick else self.full)()

    def label(self, quick: bool) -> str:
        return self.quick_model if quick and self.quick_model else self.model


# The rows of benchmarks/models.py, in its order.
MODELS = [
    ModelRow("lenet5_b32", "LeNet-5", lenet5, uniform(0, 1, (32, 1, 28, 28)),
             uniform(0, 1, (4, 1, 28, 28))),
    ModelRow("lenet5_b1", "LeNet-5", lenet5, uniform(0, 1, (1, 1, 28, 28)),
             uniform(0, 1, (1, 1, 28, 28))),
    ModelRow("resnet18", _resnet_label(False), resnet18, randn((1, *RESNET_INPUT[False])),
             randn((1, *RESNET_INPUT[True])), quick_model=_resnet_label(True)),
    ModelRow("mlp_step", "MLP 784-128-10, SGD step", mlp, batch_with_targets((64, 784), 10),
             batch_with_targets((8, 784), 10), train=True),
]
# Model rows that only the suite runs.
SUITE_MODELS = [
    ModelRow("lenet5_step", "LeNet-5, SGD step", lenet5, batch_with_targets((128, 1, 28, 28), 10),
             batch_with_targets((8, 1, 28, 28), 10), train=True),
    ModelRow("resnet18_b64", _resnet_label(False) + ", batch 64", resnet18,
             randn((64, *RESNET_INPUT[False])), randn((4, *RESNET_INPUT[True])),
             quick_model=_resnet_label(True) + ", batch 4"),
    ModelRow("bert_base", "BERT-base shape (12 x 768, 12 heads), sequence 128, embedded input",
             bert_base, randn((1, 128, 768)), randn((1, 8, 64)),
             quick_model="BERT (2 x 64, 2 heads), sequence 8, embedded input"),
    ModelRow("gpt2_small", "GPT-2 small shape (12 x 768, 12 heads, vocab 50257), next token of "
             "a 128-token embedded prompt", gpt2_small, randn((1, 128, 768)), randn((1, 8, 64)),
             quick_model="GPT-2 (2 x 64, 2 heads, vocab 512), next token of 8, embedded input"),
]
ALL_MODELS = {row.name: row for row in MODELS + SUITE_MODELS}


def plain_step(row: ModelRow, model: tnn.Module) -> Callable:
    """The plaintext torch run of a model row, on its inputs."""
    if not row.train:
        def infer(x):
            with torch.no_grad():
                return model(x)
        return infer
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(x, target):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
    return step


# -- any row by name ------------------------------------------------------------------------
def kind(name: str) -> str:
    """'op' or 'model'."""
    return "op" if name in ALL_OPS else "model"


def inputs(name: str, quick: bool) -> tuple:
    """A row's seeded inputs (the same on every party, ours and CrypTen's)."""
    row = ALL_OPS.get(name) or ALL_MODELS[name]
    return row.inputs(quick)


def plain(name: str, quick: bool, device: str = "cpu",
          dtype: torch.dtype | None = None) -> tuple[Callable, tuple]:
    """(the plaintext torch run of a row, its inputs), the model and the inputs on device
    (an op's inputs of dtype, if given)."""
    if kind(name) == "op":
        op = ALL_OPS[name]
        return op.plain, tuple(t.to(device=device, dtype=dtype) for t in op.inputs(quick))
    row = ALL_MODELS[name]
    return (plain_step(row, row.build(quick).to(device)),
            tuple(t.to(device) for t in row.inputs(quick)))
