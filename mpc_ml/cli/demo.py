"""`mpc-ml demo`: private training and inference of a small CNN on scikit-learn's digits.

Two compute parties and a dealer, each its own process on loopback. Party 0 owns the
model (a small CNN), party 1 owns the data (8x8 digit images and their labels). The
model is trained on secret shares for a few epochs, then run privately on the
held-out split; the predictions go to the data owner only. The same training in
plaintext torch, from the same initial weights and the same batches, runs beside it.
`--task transformer` trains a small transformer encoder (torch's own
TransformerEncoderLayer) on the same digits read as sequences: 8 rows of 8 pixels are 8
tokens. `--task linear` runs the earlier demo: linear regression on the diabetes data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

import mpc_ml as mpc

SEED = 0


def _sklearn(name: str):
    try:
        import sklearn.datasets as datasets
    except ImportError:  # pragma: no cover - the demo's extra
        raise SystemExit("the demo needs scikit-learn: pip install 'mpc_ml[bench]'") from None
    return getattr(datasets, name)()


def digits_split(sequences: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """(train images, train labels, test images, test labels): a fixed 80/20 split.

    Images are 1 x 8 x 8, or with sequences=True 8 tokens (the rows) of 8 pixels."""
    data = _sklearn("load_digits")
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    x = x if sequences else x.unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def make_cnn() -> torch.nn.Module:
    """The model owner's CNN (fixed initial weights)."""
    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10))


class DigitTransformer(torch.nn.Module):
    """A one-layer transformer encoder over 8 tokens of 8 pixels: a token embedding, a
    learned position embedding, torch's TransformerEncoderLayer (pre-norm, 2 heads), the
    mean over tokens and a linear classifier."""

    def __init__(self, width: int = 16, heads: int = 2, feedforward: int = 32):
        super().__init__()
        self.embed = torch.nn.Linear(8, width)
        self.position = torch.nn.Parameter(0.1 * torch.randn(8, width))
        self.encoder = torch.nn.TransformerEncoderLayer(width, heads, feedforward, dropout=0.0,
                                                        batch_first=True, norm_first=True)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(dim=1))


def make_transformer() -> torch.nn.Module:
    """The model owner's transformer (fixed initial weights)."""
    torch.manual_seed(SEED)
    return DigitTransformer()


@dataclass(frozen=True)
class Task:
    """A digits classification task: its model, how the images are read, its SGD."""

    title: str
    make_model: Callable[[], torch.nn.Module]
    sequences: bool
    epochs: int
    lr: float
    momentum: float = 0.0
    batch_size: int = 32


TASKS = {
    "cnn": Task("a small CNN", make_cnn, False, epochs=4, lr=0.5),
    "transformer": Task("a transformer encoder (8 tokens of 8 pixels)", make_transformer, True,
                        epochs=5, lr=0.1, momentum=0.9),
}


def batches(n: int, batch_size: int, epoch: int) -> list[torch.Tensor]:
    """The public batch order of one epoch."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch))
    return list(order.split(batch_size))


def train_plaintext(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                    batch_size: int, lr: float, momentum: float = 0.0) -> torch.nn.Module:
    """The baseline: the same SGD on the same batches, in float."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for epoch in range(epochs):
        for idx in batches(len(y), batch_size, epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def train_party(torch_model: torch.nn.Module, task: Task, epochs: int,
                max_steps: int | None = None) -> dict:
    """One party's side of private training and inference (max_steps: stop training early)."""
    from tqdm import tqdm

    rank = mpc.rank()
    x_train, y_train, x_test, y_test = digits_split(task.sequences)
    mine = rank == 1  # the data owner
    model = mpc.nn.from_pytorch(torch_model, x_train[:2]).encrypt(src=0)
    x = mpc.encrypt(x_train if mine else None, src=1, shape=x_train.shape)
    onehot = torch.nn.functional.one_hot(y_train, 10).float()
    targets = mpc.encrypt(onehot if mine else None, src=1, shape=onehot.shape)
    opt = mpc.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    loss_fn = mpc.nn.CrossEntropyLoss()
    mpc.reset_stats()
    start = time.perf_counter()
    steps = [(e, idx) for e in range(epochs) for idx in batches(len(y_train), task.batch_size, e)]
    steps = steps[:max_steps]
    bar = tqdm(steps, desc="private training", unit="batch", disable=rank != 0)
    for step, (epoch, idx) in enumerate(bar):
        loss = loss_fn(model(x[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.decrypt().item():.3f}")  # display only
    train_seconds = time.perf_counter() - start
    train_stats = mpc.stats()
    last_loss = loss.decrypt().item()  # display only
    mpc.reset_stats()
    start = time.perf_counter()
    with mpc.no_grad():
        scores = model(mpc.encrypt(x_test if mine else None, src=1, shape=x_test.shape))
        predicted = scores.argmax(dim=1).decrypt(dst=1)  # only the data owner learns them
    infer_seconds = time.perf_counter() - start
    accuracy = None if predicted is None else (predicted.round().long() == y_test).float().mean().item()
    return {"accuracy": accuracy, "last_loss": last_loss, "train_seconds": train_seconds,
            "train_stats": train_stats,
            "infer_seconds": infer_seconds, "infer_stats": mpc.stats(), "steps": len(steps)}


def run_digits(task: Task, epochs: int) -> None:
    """Train task's model privately and in plaintext from the same start; print both."""
    print(f"mpc_ml demo: private training of {task.title} on scikit-learn's digits")
    print("2 compute parties and a dealer, each its own process, tcp on loopback")
    print("party 0 owns the model, party 1 owns the images and labels\n")
    x_train, y_train, x_test, y_test = digits_split(task.sequences)
    initial = task.make_model()
    baseline = train_plaintext(task.make_model(), x_train, y_train, epochs, task.batch_size,
                               task.lr, task.momentum)
    with torch.no_grad():
        plain_accuracy = (baseline(x_test).argmax(1) == y_test).float().mean().item()
    results = mpc.run(train_party, world_size=2, backend="tcp", provider="dealer",
                      kwargs=dict(torch_model=initial, task=task, epochs=epochs))
    owner = results[1]
    print(f"\n{len(y_train)} training images, {len(y_test)} test images, {epochs} epochs of "
          f"batch {task.batch_size}, SGD lr {task.lr}, momentum {task.momentum}")
    print(f"test accuracy: private {100 * owner['accuracy']:.1f}%   "
          f"plaintext (same start, same batches) {100 * plain_accuracy:.1f}%")
    for rank, res in enumerate(results):
        for phase in ("train", "infer"):
            s = res[f"{phase}_stats"]
            print(f"party {rank} {phase:5}: {res[f'{phase}_seconds']:6.1f} s, {s['rounds']:6d} rounds, "
                  f"{s['bytes_sent'] / 1e6:8.1f} MB sent, dealer sent it "
                  f"{s.get('dealer_bytes_received', 0) / 1e6:.1f} MB")


# -- the first demo: linear regression --------------------------------------------------------
def load_diabetes_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised diabetes features (party 0's) and targets (party 1's)."""
    data = _sklearn("load_diabetes")
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.float64).unsqueeze(1)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def linear_party(epochs: int, lr: float) -> dict:
    """One party's side of private linear regression (full-batch gradient descent)."""
    from tqdm import tqdm

    rank = mpc.rank()
    features, targets = load_diabetes_split()
    n, d = features.shape
    x = mpc.encrypt(features if rank == 0 else None, src=0, shape=(n, d))
    y = mpc.encrypt(targets if rank == 1 else None, src=1, shape=(n, 1))
    w = mpc.encrypt(torch.zeros(d, 1, dtype=torch.float64), src=0)
    b = mpc.encrypt(torch.zeros(1, dtype=torch.float64), src=0)
    pw, pb = torch.zeros(d, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    mpc.reset_stats()
    start = time.perf_counter()
    history = []
    for epoch in tqdm(range(epochs), desc="private training", disable=rank != 0, unit="epoch"):
        residual = x @ w + b - y
        w = w - (x.t() @ residual) * (2 * lr / n)
        b = b - residual.sum(0) * (2 * lr / n)
        p_res = features @ pw + pb - targets
        pw = pw - features.t() @ p_res * (2 * lr / n)
        pb = pb - p_res.sum(0) * (2 * lr / n)
        if epoch % 10 == 9 or epoch == epochs - 1:
            history.append((epoch + 1, float((residual.decrypt() ** 2).mean()),  # display only
                            float((p_res ** 2).mean())))
    return {"history": history, "stats": mpc.stats(), "seconds": time.perf_counter() - start,
            "weights_error": float((w.decrypt() - pw).abs().max())}


def run_linear(epochs: int = 60, lr: float = 0.05) -> None:
    print("mpc_ml demo: private linear regression, 2 parties, tcp on loopback")
    print("party 0 holds the diabetes features (442 x 10), party 1 the targets\n")
    results = mpc.run(linear_party, world_size=2, backend="tcp", provider="dealer",
                      kwargs={"epochs": epochs, "lr": lr})
    print(f"\n{'epoch':>6} {'private MSE':>12} {'plaintext MSE':>14}")
    for epoch, private_loss, plain_loss in results[0]["history"]:
        print(f"{epoch:>6} {private_loss:>12.5f} {plain_loss:>14.5f}")
    print(f"\nmax |private weight - plaintext weight| = {results[0]['weights_error']:.2e}")
    for rank, res in enumerate(results):
        s = res["stats"]
        print(f"party {rank}: {res['seconds']:.2f} s, {s['rounds']} rounds, "
              f"{s['bytes_sent'] / 1e6:.2f} MB sent, {s['bytes_received'] / 1e6:.2f} MB received")


def main(task: str = "cnn", epochs: int | None = None) -> None:
    """Run a demo task ('cnn', 'transformer' or 'linear')."""
    if task in TASKS:
        run_digits(TASKS[task], epochs or TASKS[task].epochs)
    elif task == "linear":
        run_linear(epochs=epochs or 60)
    else:
        raise ValueError(f"unknown demo task {task!r}")
