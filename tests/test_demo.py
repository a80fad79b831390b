"""The demo tasks' private training follows the same SGD in plaintext torch (a few steps
of each; `mpc-ml demo` runs them whole)."""
import pytest
import torch

import mpc_ml as mpc
from mpc_ml.cli import demo


def plaintext_loss(task: demo.Task, steps: int) -> float:
    """The loss of plaintext training's step `steps`, on the demo's batches."""
    x, y, _, _ = demo.digits_split(task.sequences)
    model = task.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    for idx in demo.batches(len(y), task.batch_size, 0)[:steps]:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("name", ["transformer", "cnn"])
def test_private_training_follows_plaintext(name):
    task, steps = demo.TASKS[name], 4
    results = mpc.run(demo.train_party, world_size=2, provider="tfp",
                      kwargs=dict(torch_model=task.make_model(), task=task, epochs=1,
                                  max_steps=steps))
    owner = results[1]
    assert abs(owner["last_loss"] - plaintext_loss(task, steps)) < 2e-2
    assert 0 <= owner["accuracy"] <= 1 and owner["train_stats"]["rounds"] > 0
