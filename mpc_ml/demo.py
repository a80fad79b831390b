"""`mpc-ml demo`: private linear regression on scikit-learn's diabetes data.

Party 0 holds the features, party 1 the targets; each party is its own process on
loopback. Both parties standardise their own data locally, then train a linear model
by full-batch gradient descent on secret shares. The loss is revealed each epoch for
display only, beside the same training in plaintext float64 from the same start.
"""
from __future__ import annotations

import time

import torch

import mpc_ml as mpc


def load_split_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised diabetes features (party 0's) and targets (party 1's)."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:  # pragma: no cover - the demo's extra
        raise SystemExit("the demo needs scikit-learn: pip install 'mpc_ml[bench]'") from None
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.float64).unsqueeze(1)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def train_party(epochs: int, lr: float) -> dict:
    """One party's side of the private training; returns losses and traffic."""
    from tqdm import tqdm

    rank = mpc.rank()
    features, targets = load_split_data()
    n, d = features.shape
    x = mpc.encrypt(features if rank == 0 else None, src=0, shape=(n, d))
    y = mpc.encrypt(targets if rank == 1 else None, src=1, shape=(n, 1))
    w_init = torch.zeros(d, 1, dtype=torch.float64)
    w, b = mpc.encrypt(w_init, src=0), mpc.encrypt(torch.zeros(1, dtype=torch.float64), src=0)
    pw, pb = w_init.clone(), torch.zeros(1, dtype=torch.float64)
    mpc.reset_stats()
    start = time.perf_counter()
    history = []
    bar = tqdm(range(epochs), desc="private training", disable=rank != 0, unit="epoch")
    for epoch in bar:
        residual = x @ w + b - y
        w = w - (x.t() @ residual) * (2 * lr / n)
        b = b - residual.sum(0) * (2 * lr / n)
        # the same step in plaintext
        p_res = features @ pw + pb - targets
        pw = pw - features.t() @ p_res * (2 * lr / n)
        pb = pb - p_res.sum(0) * (2 * lr / n)
        if epoch % 10 == 9 or epoch == epochs - 1:
            private_loss = float((residual.decrypt() ** 2).mean())  # revealed for display
            plain_loss = float((p_res ** 2).mean())
            history.append((epoch + 1, private_loss, plain_loss))
            bar.set_postfix(private=f"{private_loss:.4f}", plaintext=f"{plain_loss:.4f}")
    elapsed = time.perf_counter() - start
    return {"history": history, "stats": mpc.stats(), "seconds": elapsed,
            "weights_error": float((w.decrypt() - pw).abs().max())}


def main(epochs: int = 60, lr: float = 0.05) -> None:
    """Run the demo with two parties over tcp on loopback and print the results."""
    print("mpc_ml demo: 2 parties, tcp on loopback, trusted-first-party randomness")
    print("party 0 holds the diabetes features (442 x 10), party 1 the targets\n")
    results = mpc.run(train_party, world_size=2, backend="tcp", provider="tfp",
                      kwargs={"epochs": epochs, "lr": lr})
    out = results[0]
    print(f"\n{'epoch':>6} {'private MSE':>12} {'plaintext MSE':>14}")
    for epoch, private_loss, plain_loss in out["history"]:
        print(f"{epoch:>6} {private_loss:>12.5f} {plain_loss:>14.5f}")
    print(f"\nmax |private weight - plaintext weight| = {out['weights_error']:.2e}")
    for rank, res in enumerate(results):
        s = res["stats"]
        print(f"party {rank}: {res['seconds']:.2f} s, {s['rounds']} rounds, "
              f"{s['bytes_sent'] / 1e6:.2f} MB sent, {s['bytes_received'] / 1e6:.2f} MB received")
