"""A party script for `mpc-ml launch`: every party runs this same file.

Party 0 owns a 2x3 feature matrix x, party 1 owns a 3x1 weight vector w. Together
the parties compute y = x @ w + 0.5 and mean(x * x) on secret shares; only party 0
learns the two results, which it prints. Any number of parties >= 2 works: parties
2, 3, ... hold no input but take part in every step.

    mpc-ml launch -n 3 launchers/local/example.py
"""
import torch

import mpc_ml as mpc


def main() -> None:
    mpc.init()  # reads MPC_RANK, MPC_WORLD_SIZE, ... set by `mpc-ml launch`
    rank = mpc.rank()

    # In a deployment each party loads its own data; here the owners write it inline.
    x_data = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.5]]) if rank == 0 else None
    w_data = torch.tensor([[0.25], [-1.0], [2.0]]) if rank == 1 else None

    x = mpc.encrypt(x_data, src=0, shape=(2, 3))  # non-owners pass None and the shape
    w = mpc.encrypt(w_data, src=1, shape=(3, 1))

    y = x @ w + 0.5          # private @ private (Beaver), then a public constant
    m = (x * x).mean()       # private * private, then division by a public count

    y_plain = y.decrypt(dst=0)  # party 0 gets the plaintext, the others get None
    m_plain = m.decrypt(dst=0)
    if rank == 0:
        print(f"parties: {mpc.world_size()}")
        print(f"x @ w + 0.5 = {[round(v, 4) for v in y_plain.flatten().tolist()]}")
        print(f"mean(x * x) = {m_plain.item():.4f}")
        print(f"party 0 traffic: {mpc.stats()}")
    mpc.shutdown()


if __name__ == "__main__":
    main()
