"""BinaryTensor (XOR shares of fixed-point words) against the same operations on the
plaintext's int64 encodings, 2 and 3 parties, tfp and dealer."""
import pytest
import torch

import mpc_ml as mpc
from mpc_ml.core.encoding import decode, encode
from mpc_ml.tensor.binary_tensor import BinaryTensor, encrypt_binary

X = torch.tensor([1.0, -2.5, 3.25, 0.0, -7.75, 1e4], dtype=torch.float64)
Y = torch.tensor([0.5, 4.0, -1.0, -3.0, 2.0, -1e3], dtype=torch.float64)


def words(t):
    return encode(t, 16)


EXPECTED = {
    "xor": words(X) ^ words(Y), "and": words(X) & words(Y), "or": words(X) | words(Y),
    "add": words(X) + words(Y), "not": ~words(X), "lshift": words(X) << 2,
    "rshift": words(X) >> 3, "xor_public": words(X) ^ words(torch.tensor(0.5)),
    "and_public": words(X) & words(Y),
}


@pytest.mark.parametrize("n,provider", [(2, "tfp"), (2, "dealer"), (3, "dealer")])
def test_bitwise_ops_match_the_encodings(n, provider):
    def party():
        x = encrypt_binary(X)
        y = encrypt_binary(Y if mpc.rank() == 1 else None, src=1, shape=Y.shape)
        mpc.reset_stats()
        anded = x & y
        rounds_and = mpc.stats()["rounds"]
        got = {"xor": x ^ y, "and": anded, "or": x | y, "add": x + y, "not": ~x,
               "lshift": x << 2, "rshift": x >> 3, "xor_public": x ^ 0.5, "and_public": x & Y}
        out = {k: v.decrypt().double() for k, v in got.items()}
        out["arithmetic"] = x.to_arithmetic().decrypt()
        out["back"] = BinaryTensor.from_arithmetic(mpc.encrypt(Y, src=0)).decrypt(dst=0)
        out["rounds_and"] = rounds_and
        out["random_share"] = not torch.equal(x.share, words(X))
        return out

    for rank, out in enumerate(mpc.run(party, world_size=n, provider=provider)):
        for name, word in EXPECTED.items():
            assert torch.equal(out[name], decode(word, 16, torch.float64)), name
        assert torch.allclose(out["arithmetic"].double(), X.float().double(), atol=1e-4)
        assert (out["back"] is None) == (rank != 0)
        assert out["rounds_and"] == 1 and out["random_share"]
