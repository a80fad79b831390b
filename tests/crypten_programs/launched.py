"""A CrypTen script as CrypTen's launchers run it: crypten.init() reads RANK, WORLD_SIZE
and RENDEZVOUS from the environment. Prints its rank and results as one JSON line."""
import json
import sys

import torch

import mpc_ml.compat.crypten as crypten

if len(sys.argv) > 1:
    crypten.cfg.mpc.provider = sys.argv[1]
crypten.init()
rank = crypten.comm.get().get_rank()
x = crypten.cryptensor(torch.tensor([1.0, 2.0, -3.0]), src=0)
y = crypten.cryptensor(torch.tensor([0.5, -1.0, 4.0]), src=1)
out = {"rank": rank, "world_size": crypten.comm.get().get_world_size(),
       "product": (x * y).get_plain_text().tolist(), "max": x.max().get_plain_text().item()}
crypten.uninit()
print(json.dumps(out))
