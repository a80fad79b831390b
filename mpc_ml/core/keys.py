"""Key agreement for seeds: X25519 + HKDF-SHA256, and single-use sealing (ChaCha20-Poly1305).

Two parties each make an ephemeral X25519 key pair and send the public half; each
combines its private key with the other's public key into the same shared secret, which
HKDF turns into a seed bound to a context (the labels, both ranks, both public keys and
the job's agreed settings: the handshake transcript). An observer of every link sees
only public keys and learns nothing of any seed (Diffie-Hellman; RFC 7748, RFC 5869).
Without TLS nothing authenticates the public keys, so an active attacker on a link could
stand in the middle; with TLS the link itself authenticates them.
"""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_KEY_BYTES = 32
SEAL_OVERHEAD = 16  # the Poly1305 tag
_NONCE = bytes(12)  # each sealing key is used once, so a fixed nonce is safe


class KeyAgreement:
    """One side's ephemeral X25519 key pair."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def derive(self, peer_public: bytes, label: str, context: bytes, length: int = 16) -> bytes:
        """`length` bytes that only this side and the owner of peer_public can compute."""
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an X25519 public key has {PUBLIC_KEY_BYTES} bytes, "
                             f"got {len(peer_public)}")
        secret = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                    info=b"mpc_ml " + label.encode() + b"\0" + context)
        return hkdf.derive(secret)


def transcript(*parts: bytes | str | int) -> bytes:
    """An unambiguous byte string of the parts (each length-prefixed)."""
    out = bytearray()
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out += len(raw).to_bytes(4, "little") + raw
    return bytes(out)


def seal(key: bytes, plaintext: bytes) -> bytes:
    """plaintext encrypted and authenticated under a single-use 32-byte key."""
    return ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, None)


def unseal(key: bytes, sealed: bytes) -> bytes:
    """The plaintext of seal(key, ...); ValueError if it was tampered with."""
    from cryptography.exceptions import InvalidTag
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, sealed, None)
    except InvalidTag:
        raise ValueError("a sealed seed failed authentication (tampered, or another key)") from None
