"""The device PRG (ChaCha20 in torch integer ops, core/chacha.py) bit for bit against the
`cryptography` package's ChaCha20, its keystream made on every device of helpers.DEVICES
(the CPU, and the GPU where there is one), and whole protocols under
Config(prg="chacha20") (with the shares and correlations on that device) against
plaintext, the dealer's draws included."""
import os
import struct

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

import mpc_ml as mpc
from helpers import DEVICES
from mpc_ml.core import chacha
from mpc_ml.core.prg import CHACHA_AHEAD, PRG

on_devices = pytest.mark.parametrize("device", DEVICES)


def on_host(t: torch.Tensor, device: str) -> torch.Tensor:
    """t, made on device (checked), brought to the CPU to compare."""
    assert t.device.type == torch.device(device).type
    return t.cpu()


def reference_keystream(key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    """cryptography's ChaCha20: its 16-byte nonce is the 4-byte block counter (little
    endian) then RFC 8439's 12-byte nonce."""
    cipher = Cipher(algorithms.ChaCha20(key, struct.pack("<I", counter) + nonce), mode=None)
    return cipher.encryptor().update(b"\0" * nbytes)


@on_devices
@pytest.mark.parametrize("counter, count", [(0, 1), (7, 33), ((1 << 32) - 3, 3), (5, 4099)])
def test_chacha20_blocks_match_cryptography(counter, count, device):
    key, nonce = os.urandom(32), os.urandom(12)
    words = on_host(chacha.blocks(key, nonce, counter, count, device), device)
    ours = b"".join(struct.pack("<16I", *row.tolist()) for row in words)
    assert ours == reference_keystream(key, nonce, counter, 64 * count)


@on_devices
def test_ring_elements_are_the_keystream_bytes(device):
    key, nonce = os.urandom(32), os.urandom(12)
    got = on_host(chacha.ring_elements(key, nonce, 3, 1001, device), device)
    stream = reference_keystream(key, nonce, 3, 8 * 1001 + 64)[:8 * 1001]
    assert torch.equal(got, torch.frombuffer(bytearray(stream), dtype=torch.int64))


@on_devices
def test_rfc_8439_test_vector(device):
    """RFC 8439 section 2.3.2: key 00..1f, nonce 00 00 00 09 00 00 00 4a 00 00 00 00,
    block counter 1."""
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    first = on_host(chacha.blocks(key, nonce, 1, 1, device), device)[0]
    assert first[:4].tolist() == [0xe4e7f110, 0x15593bd1, 0x1fdd0f50, 0xc47120a3]


def test_the_counter_may_not_wrap():
    with pytest.raises(ValueError, match="wrap"):
        chacha.blocks(bytes(32), bytes(12), (1 << 32) - 1, 2)


@on_devices
def test_prg_ring_draws_are_the_keystream_and_cross_nonces(device):
    seed = os.urandom(16)
    prg = PRG(seed, "chacha20")
    first = on_host(prg.random_ring((3, 5), device), device)
    second = on_host(prg.random_ring((11,), device), device)
    stream = reference_keystream(prg._key, bytes(12), 0, 64 * 4)
    words = torch.frombuffer(bytearray(stream), dtype=torch.int64)
    assert torch.equal(first.reshape(-1), words[:15])
    assert torch.equal(second, words[15:26])  # draws are consecutive words of the stream
    # past what is made ahead
    big = on_host(PRG(seed, "chacha20").random_ring((CHACHA_AHEAD + 5,), device), device)
    assert torch.equal(big[:15], first.reshape(-1)) and big.numel() == CHACHA_AHEAD + 5
    prg = PRG(seed, "chacha20")
    prg._block = (1 << 32) - 1  # the next blocks span the last one of nonce 0 and nonce 1
    spanning = on_host(prg.random_ring((16,), device), device)
    tail = reference_keystream(prg._key, bytes(12), (1 << 32) - 1, 64)
    head = reference_keystream(prg._key, (1).to_bytes(12, "little"), 0, 64)
    assert torch.equal(spanning, torch.frombuffer(bytearray(tail + head), dtype=torch.int64))
    assert PRG(seed, "chacha20").derive("x").algorithm == "chacha20"


@on_devices
@pytest.mark.parametrize("n,provider", [(2, "dealer"), (3, "dealer"), (2, "tfp")])
def test_protocols_run_on_the_chacha20_stream(n, provider, device):
    x = torch.randn(4, 6, dtype=torch.float64)
    w = torch.randn(6, 3, dtype=torch.float64)
    config = mpc.Config(prg="chacha20", **({} if device == "cpu" else {"device": device}))

    def party():
        a = mpc.encrypt(x, src=0, device=device)
        b = mpc.encrypt(w, src=n - 1, device=device)
        y, s = (a @ b).relu(), (a * a).sigmoid()
        placed = y.share.device.type == s.share.device.type == torch.device(device).type
        return y.decrypt().cpu(), s.decrypt().cpu(), placed

    for got, sig, placed in mpc.run(party, world_size=n, provider=provider, config=config):
        assert placed, f"results left {device}"
        assert torch.allclose(got, (x @ w).relu(), atol=1e-3)
        assert torch.allclose(sig, torch.sigmoid(x * x), atol=1e-3)


def test_the_prg_is_agreed_and_checked():
    with pytest.raises(ValueError, match="unknown prg"):
        mpc.Config(prg="nope")
    assert mpc.Config(prg="chacha20").agreed_fields()["prg"] == "chacha20"  # the handshake's


@pytest.mark.parametrize("counter, count", [((1 << 31) - 3, 7), (1 << 31, 2),
                                            ((1 << 32) - 1, 1), (0x7FFFFFFF, 1)])
def test_chacha_counters_across_the_int32_sign_bit(counter, count):
    """Counters >= 2^31 (negative as int32 words) give cryptography's blocks."""
    key, nonce = os.urandom(32), os.urandom(12)
    words = chacha.blocks(key, nonce, counter, count)
    ours = b"".join(struct.pack("<16I", *row.tolist()) for row in words)
    assert ours == reference_keystream(key, nonce, counter, 64 * count)


def test_chacha_keyed_blocks_on_edge_keys():
    """Keys whose 32-bit halves are 0x80000000, 0xFFFFFFFF, 0x7FFFFFFF (the int64 to int32
    truncation) give cryptography's block 0 under the key k || 0^128."""
    halves = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x80000001]
    rows = []
    for lo in halves:
        for hi in halves:
            w = lo | (hi << 32)
            w = w - (1 << 64) if w >= 1 << 63 else w
            rows.append([w, ~w])
    keys = torch.tensor(rows, dtype=torch.int64)
    for k, got in zip(keys, chacha.keyed_blocks(keys)):
        assert got.numpy().tobytes() == reference_keystream(k.numpy().tobytes() + bytes(16),
                                                            bytes(12), 0, 64)


def test_prg_stream_across_the_counter_wrap_matches_a_64_bit_counter():
    """The PRG's nonce switch where the 32-bit counter would wrap is OpenSSL's carry into
    nonce word 0."""
    prg = PRG(os.urandom(16), "chacha20")
    prg._block = (1 << 32) - 2
    got = prg.random_ring((32,))
    want = (reference_keystream(prg._key, bytes(12), (1 << 32) - 2, 128)
            + reference_keystream(prg._key, (1).to_bytes(12, "little"), 0, 128))
    assert got.numpy().tobytes() == want
