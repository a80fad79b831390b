"""Comparison by function secret sharing (Config(comparison='fss'),
protocols/fss_comparison.toml): the DCF shares its function exactly, every comparison
is exact against plaintext, the traffic equals the spec, and what it cannot do is
refused."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import enc, measured, on_matrix, randn, request_bytes, rounded
from mpc_ml.core import chacha, dcf
from mpc_ml.core.specs import load_spec
from mpc_ml.primitives import ltz
from mpc_ml.providers import base as providers_base
from mpc_ml.session import current
from test_protocol_costs import assert_costs

FSS = mpc.Config(comparison="fss")
SPEC = load_spec("fss_comparison")


@pytest.mark.parametrize("prg, n", [("aes", 500), ("chacha20", 64)])
def test_the_dcf_shares_beta_below_alpha_and_zero_elsewhere(prg, n):
    g = torch.Generator().manual_seed(7)

    def words(*shape, low=-2 ** 63, high=2 ** 63 - 1):
        return torch.randint(low, high, shape, generator=g, dtype=torch.int64)

    alpha = words(n, low=0)
    alpha[:4] = torch.tensor([0, 1, 2 ** 63 - 1, 2 ** 62])
    beta = words(n)
    seeds = [words(n, 2) for _ in range(2)]
    part = dcf.gen(alpha, beta, *seeds, prg=prg)
    top = 2 ** 63 - 1
    for x in (words(n, low=0), alpha, (alpha - 1) & top, (alpha + 1) & top,
              torch.zeros(n, dtype=torch.int64), torch.full((n,), top)):
        total = dcf.evaluate(0, seeds[0], part, x, prg) + dcf.evaluate(1, seeds[1], part, x, prg)
        assert torch.equal(total, torch.where(x < alpha, beta, 0))
    # a key alone is not the function: party 0's share is no function of [x < alpha]
    share = dcf.evaluate(0, seeds[0], part, alpha, prg)
    assert len(torch.unique(share)) > n // 2
    # the two trees' PRGs differ: one's keys evaluated with the other's PRG are garbage
    other = "aes" if prg == "chacha20" else "chacha20"
    wrong = dcf.evaluate(0, seeds[0], part, alpha, other) + dcf.evaluate(1, seeds[1], part, alpha, other)
    assert not torch.equal(wrong, torch.zeros(n, dtype=torch.int64))


@pytest.mark.parametrize("prg", ["aes", "chacha20"])
def test_dcf_at_the_edges(prg):
    """The DCF at the edges: alpha and x at 0, 1, 2^62, 2^63 - 1, both PRGs."""
    edges = [0, 1, 2, (1 << 62) - 1, 1 << 62, (1 << 63) - 2, (1 << 63) - 1]
    alpha = torch.tensor([a for a in edges for _ in edges], dtype=torch.int64)
    x = torch.tensor([b for _ in edges for b in edges], dtype=torch.int64)
    beta = torch.full_like(alpha, -7)
    seeds = [torch.randint(-2 ** 63, 2 ** 63 - 1, (len(alpha), 2), dtype=torch.int64)
             for _ in range(2)]
    part = dcf.gen(alpha, beta, seeds[0], seeds[1], prg)
    total = dcf.evaluate(0, seeds[0], part, x, prg) + dcf.evaluate(1, seeds[1], part, x, prg)
    assert torch.equal(total, torch.where(x < alpha, beta, torch.zeros_like(beta)))


def test_the_chacha20_tree_prg_is_chacha20_keyed_by_the_seed():
    """G(s) under prg='chacha20' is block 0 of ChaCha20 (RFC 8439, nonce 0) with the key
    s || 0^128, checked against the cryptography package for many seeds at once."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    seeds = torch.randint(-2 ** 63, 2 ** 63 - 1, (9, 2), generator=torch.Generator().manual_seed(3))
    seeds[0] = torch.tensor([-1, -1])
    got = chacha.keyed_blocks(seeds)
    for seed, row in zip(seeds, got):
        key = seed.numpy().tobytes() + bytes(16)
        stream = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(64))
        assert row.numpy().tobytes() == stream


def chunk_requests(numel: int) -> int:
    sizes = [min(providers_base.DCF_MAX_ELEMENTS, numel - i)
             for i in range(0, numel, providers_base.DCF_MAX_ELEMENTS)]
    return sum(request_bytes("dcf_ltz", numel=s) for s in sizes)


@pytest.mark.parametrize("numel", [37, providers_base.DCF_MAX_ELEMENTS + 3])
def test_ltz_and_relu_cost_what_the_spec_says(numel):
    t = torch.cat([randn(5, numel - 5, scale=50.0), torch.tensor([0.0, -2 ** -16, 2 ** -16, -3e4, 3e4])])

    def party():
        x = enc(t, 0)
        bits, s_ltz = measured(lambda: ltz(current(), x.share))
        relu, s_relu = measured(x.relu)
        return s_ltz, mpc.MPCTensor(bits, current()).decrypt(), s_relu, relu.decrypt()

    r = rounded(t)
    sizes = dict(numel=numel, chunks=-(-numel // providers_base.DCF_MAX_ELEMENTS),
                 dcf_request_bytes=chunk_requests(numel),
                 triple_request_bytes=request_bytes("triple", op="mul", a_shape=[numel],
                                                    b_shape=[numel], kwargs={}))
    for rank, (s_ltz, bits, s_relu, relu) in enumerate(mpc.run(party, 2, config=FSS)):
        kw = dict(n=2, rank=rank, provider="dealer", **sizes)
        assert_costs(s_ltz, SPEC["ltz"], "fss ltz", **kw)
        assert_costs(s_relu, SPEC["relu"], "fss relu", **kw)
        assert torch.equal(bits * 2 ** 16, (r < 0).to(bits.dtype))  # integer bits, decoded
        assert torch.equal(relu.double(), torch.relu(r))


def test_every_comparison_is_exact():
    a = torch.cat([randn(11, 40, scale=20.0), torch.tensor([0.0, 2 ** -16, -2 ** -16, 1e6, -1e6])])
    b = torch.cat([randn(12, 40, scale=20.0), torch.tensor([0.0, 0.0, 0.0, 1e6, 1e6])])
    img = randn(13, 2, 3, 6, 6, scale=5.0)

    def party():
        x, y, z = enc(a, 0), enc(b, 1), enc(img, 0)
        out = {"lt": x < y, "gt": x > y, "le": x <= y, "eq": x == y, "ne": x != y,
               "sign": x.sign(), "abs": x.abs(), "clamp": x.clamp(-5.0, 5.0),
               "max": x.reshape(5, 9).max(-1)[0], "argmax": x.reshape(5, 9).argmax(-1),
               "pool": z.max_pool2d(2), "relu_of_product": (x[:40] * y[:40]).relu()}
        return {k: v.decrypt() for k, v in out.items()}

    ra, rb, ri = rounded(a), rounded(b), rounded(img)
    want = {"lt": ra < rb, "gt": ra > rb, "le": ra <= rb, "eq": ra == rb, "ne": ra != rb,
            "sign": ra.sign(), "abs": ra.abs(), "clamp": ra.clamp(-5, 5),
            "max": ra.reshape(5, 9).max(-1)[0], "argmax": ra.reshape(5, 9).argmax(-1),
            "pool": F.max_pool2d(ri, 2)}
    for got in mpc.run(party, 2, config=FSS):
        for name, w in want.items():
            assert torch.equal(got[name].double(), w.double()), name
        assert float((got["relu_of_product"] - torch.relu(ra[:40] * rb[:40])).abs().max()) <= 2 ** -16


def relu_party(t: torch.Tensor) -> torch.Tensor:
    """Module-level (spawned processes import it)."""
    return enc(t, 0).relu().decrypt()


@on_matrix((2, "tcp", "dealer"))
def test_over_sockets_with_a_dealer_process(matrix):
    t = randn(14, 3, 50, scale=10.0)
    for got in matrix.run(relu_party, args=(t,), config=FSS):
        assert torch.equal(got.double(), torch.relu(rounded(t)))


@pytest.mark.parametrize("n, provider", [(3, "dealer"), (2, "tfp")])
def test_fss_is_refused_beyond_two_parties_with_a_dealer(n, provider):
    with pytest.raises(ValueError, match="comparison='fss' is a 2-party protocol with a dealer"):
        mpc.run(lambda: None, world_size=n, provider=provider, config=FSS)


def test_parties_that_disagree_on_the_comparison_are_refused():
    assert FSS.agreed_fields()["comparison"] == "fss"
    assert json.dumps(FSS.agreed_fields()) != json.dumps(mpc.Config().agreed_fields())
    with pytest.raises(ValueError, match="unknown comparison"):
        mpc.Config(comparison="garbled")


def test_malformed_key_material_from_the_dealer_is_refused(monkeypatch):
    kind = providers_base.KINDS["dcf_ltz"]
    real = kind.derive

    def short_keys(params, free, per_party, prg):
        out = real(params, free, per_party, prg)
        return out[:1] + [out[1][:, :-1]] + out[2:]  # a seed correction one element short

    monkeypatch.setattr(kind, "derive", short_keys)
    with pytest.raises(mpc.PartyError, match="malformed correlation data from the dealer"):
        mpc.run(lambda: enc(randn(15, 8), 0).relu().decrypt(), 2, config=FSS)


def prefetched_relu_party(t: torch.Tensor, repeats: int) -> list:
    from mpc_ml.tensor import trace_correlations
    x = enc(t, 0)
    with trace_correlations() as trace:
        x.relu().decrypt()
    trace.prefetch(repeats)
    out = []
    for _ in range(repeats):
        value, stats = measured(lambda: x.relu().decrypt())
        out.append((value, stats))
    return out


def test_fss_keys_stream_through_the_offline_phase():
    """A traced relu prefetched: the dealer makes each repeat's keys ahead and streams
    them to both parties; no request goes per operation (dealer_messages counts only the
    acknowledgements), and every result is exact."""
    t = randn(16, 40, scale=10.0)
    for rank, runs in enumerate(mpc.run(prefetched_relu_party, 2, args=(t, 3), config=FSS)):
        for value, stats in runs:
            assert torch.equal(value.double(), torch.relu(rounded(t)))
            assert stats["rounds"] == 3  # ltz, the product by the bit, the decrypt
            assert stats["dealer_bytes_received"] >= 1536 * 40  # the keys' public parts
            assert stats["dealer_bytes_sent"] == (9 if rank == 1 else 0)  # one {"ack": 1}


def test_an_empty_tensor_compares_to_nothing():
    def party():
        x = enc(torch.zeros(0), 0)
        return x.relu().decrypt(), (x < 1.0).decrypt()

    for relu, below in mpc.run(party, 2, config=FSS):
        assert relu.shape == (0,) and below.shape == (0,)


@pytest.mark.parametrize("rows, k, with_index", [(3, 10, True), (4, 5, False), (2, 1, True)])
def test_the_tournament_costs_what_the_spec_says(rows, k, with_index):
    t = randn(17, rows, k, scale=20.0)
    section = SPEC["max_along_last"]

    def party():
        x = enc(t, 0) if with_index else enc(t.reshape(1, 1, rows, k), 0)
        out, stats = measured(lambda: x.max(-1) if with_index else x.max_pool2d((1, k)))
        values = out[0] if with_index else out  # the pooling: one window of k per row
        return stats, values.decrypt()

    selected = 2 if with_index else 1
    levels, request_bytes_levels, chunks, length = 0, 0, 0, k
    while length > 1:
        shape = ([rows] if with_index else [1, 1, rows, 1]) + [length // 2]  # pooling: windows
        request_bytes_levels += request_bytes("dcf_ltz", numel=rows * (length // 2)) + selected * \
            request_bytes("triple", op="mul", a_shape=shape, b_shape=shape, kwargs={})
        chunks += 1
        levels += 1
        length -= length // 2
    want = rounded(t).max(-1)[0]
    sizes = dict(rows=rows, k=k, selected=selected, levels=levels, chunks_levels=chunks,
                 dealer_request_bytes_levels=request_bytes_levels)
    for rank, (stats, values) in enumerate(mpc.run(party, 2, config=FSS)):
        assert_costs(stats, section, f"fss max of ({rows}, {k})", n=2, rank=rank,
                     provider="dealer", **sizes)
        assert torch.equal(values.double().reshape(want.shape), want)
