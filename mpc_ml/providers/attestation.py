"""The dealer's attestation: SGX DCAP quotes (v3) bound to the dealer's TLS key, RA-TLS style.

The dealer makes its TLS key pair inside the enclave and quotes it, so that verifying the
quote and talking over that TLS session are one act (Gramine's RA-TLS):

1. each party sends the dealer a fresh nonce (`new_nonce()`);
2. the dealer puts report_data = SHA-256(its TLS public key, DER SubjectPublicKeyInfo) ||
   SHA-256(the nonces, each 4-byte little-endian length-prefixed, in party order) into
   the report data of its quote (`report_data_for`, `make_dealer_quote`) and sends the
   quote (and, for `sgx`, the quote's collateral: Intel-signed, so the untrusted host
   may fetch and relay it);
3. a party, before it accepts any correlation, checks the quote (`verify_quote`): its
   layout, its signature chain, the TCB status (`sgx`), the debug bit off, the
   measurement (MRENCLAVE) in the pinned list, and that report_data names the TLS key it
   is talking to and this session's nonces; any mismatch is an AttestationError naming
   what differed (its message contains `attestation` or `measurement`);
4. the parties compare `attestation_transcript(...)` (`check_transcripts`), so all of them
   attested the same dealer with the same quote.

Modes:
- `sim`: `SimPlatform`, a software signer, stands in for the platform and its quoting
  enclave, in exactly the SGX quote v3 layout. It PROTECTS NOTHING: whoever holds the sim
  keys (the dealer's host) can sign any measurement. A verified sim quote says
  `simulated=True`; the dealer and every party must print SIM_WARNING.
- `sgx`: the quote comes from Gramine's /dev/attestation (`read_gramine_quote`);
  verification parses the quote itself and checks the PCK certificate chain, the TCB
  info, the QE identity and every signature with dcap-qvl (the optional `attest` extra,
  imported only here, lazily), failing closed on any TCB status not in
  allowed_tcb_statuses (default: only UpToDate).

Imports the standard library and `cryptography` only (dcap-qvl lazily); no networking
except `fetch_collateral`, which asks a PCCS through dcap-qvl.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

MODES = ("sim", "sgx")
"""The attestation modes a dealer can run in (`none` is no attestation at all)."""

SIM_WARNING = ("attestation mode sim: a software signer stands in for the TEE; "
               "it protects nothing (tests and demos only)")
"""The line the dealer and every party print when attestation is `sim`."""

DEFAULT_TCB_STATUSES = ("UpToDate",)
"""TCB statuses accepted when the deployment file allows none by name."""

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
"""Intel's Provisioning Certification Service, the default for `fetch_collateral`."""

# --- quote v3 layout (Intel SGX ECDSA Quote Library API, appendix A.4) -------------------
HEADER_SIZE = 48
"""Quote header: version, attestation key type, TEE type, QE SVN, PCE SVN, QE vendor id, user data."""
BODY_SIZE = 384
"""ISV enclave report body (SGX REPORTBODY)."""
SIGNED_SIZE = HEADER_SIZE + BODY_SIZE
"""The attestation key signs quote[:SIGNED_SIZE] (header and body)."""
SIGNATURE_DATA_OFFSET = SIGNED_SIZE + 4
"""Offset of the quote signature data, after its 4-byte length."""
QUOTE_VERSION = 3
ATTESTATION_KEY_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
CERT_TYPE_PCK_CHAIN = 5
"""Certification data type 5: the PCK certificate chain, PEM (leaf, PCK CA, root)."""
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
SIM_USER_DATA = b"MPC_ML SIM QUOTE".ljust(20, b"\0")
"""The header's user data in a sim quote (a real QE puts its platform id there)."""
DEBUG_FLAG = 0x2
"""ATTRIBUTES.FLAGS bit 1: the enclave was launched in debug mode (its memory is readable)."""

_HEADER = struct.Struct("<HHIHH16s20s")
_MAX_QUOTE = 1 << 16
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"


class AttestationError(RuntimeError):
    """The dealer's attestation was refused or could not be made; `reason` says which check."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


# --- parsing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class ReportBody:
    """A 384-byte SGX report body (the enclave's, or the quoting enclave's)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    flags: int
    xfrm: int
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes = field(repr=False)

    @property
    def debug(self) -> bool:
        """Whether the DEBUG attribute is set (the host can read the enclave's memory)."""
        return bool(self.flags & DEBUG_FLAG)


@dataclass(frozen=True)
class QuoteSignature:
    """The ECDSA-256 quote signature data that follows the body."""

    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes


@dataclass(frozen=True)
class Quote:
    """A parsed SGX DCAP quote v3."""

    header: QuoteHeader
    body: ReportBody
    signature: QuoteSignature
    signed: bytes = field(repr=False)


class _Reader:
    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data, self.pos, self.base = data, 0, base

    def take(self, n: int, what: str) -> bytes:
        if len(self.data) - self.pos < n:
            raise AttestationError(
                f"attestation quote malformed: truncated in {what} (needs {n} bytes at offset "
                f"{self.base + self.pos}, {len(self.data) - self.pos} left)", "malformed")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def parse_report_body(raw: bytes) -> ReportBody:
    """The fields of a 384-byte SGX report body (offsets as in the SDK's sgx_report_body_t)."""
    if len(raw) != BODY_SIZE:
        raise AttestationError(f"attestation quote malformed: a report body has {BODY_SIZE} bytes, "
                               f"got {len(raw)}", "malformed")
    u16 = lambda off: int.from_bytes(raw[off:off + 2], "little")  # noqa: E731
    return ReportBody(
        cpu_svn=raw[0:16], misc_select=int.from_bytes(raw[16:20], "little"), isv_ext_prod_id=raw[32:48],
        flags=int.from_bytes(raw[48:56], "little"), xfrm=int.from_bytes(raw[56:64], "little"),
        mr_enclave=raw[64:96], mr_signer=raw[128:160], config_id=raw[192:256], isv_prod_id=u16(256),
        isv_svn=u16(258), config_svn=u16(260), isv_family_id=raw[304:320], report_data=raw[320:384],
        raw=bytes(raw))


def pack_report_body(*, mr_enclave: bytes, mr_signer: bytes, report_data: bytes, flags: int = 0x5,
                     xfrm: int = 0x3, cpu_svn: bytes = bytes(16), misc_select: int = 0,
                     isv_prod_id: int = 0, isv_svn: int = 0) -> bytes:
    """A 384-byte report body with these fields and zeros elsewhere (flags 0x5: INIT | MODE64BIT)."""
    for name, value, size in (("mr_enclave", mr_enclave, 32), ("mr_signer", mr_signer, 32),
                              ("report_data", report_data, 64), ("cpu_svn", cpu_svn, 16)):
        if len(value) != size:
            raise ValueError(f"{name} has {size} bytes, got {len(value)}")
    raw = bytearray(BODY_SIZE)
    raw[0:16] = cpu_svn
    raw[16:20] = misc_select.to_bytes(4, "little")
    raw[48:56] = flags.to_bytes(8, "little")
    raw[56:64] = xfrm.to_bytes(8, "little")
    raw[64:96] = mr_enclave
    raw[128:160] = mr_signer
    raw[256:258] = isv_prod_id.to_bytes(2, "little")
    raw[258:260] = isv_svn.to_bytes(2, "little")
    raw[320:384] = report_data
    return bytes(raw)


def parse_quote(raw: bytes) -> Quote:
    """Parse an SGX DCAP quote v3 (ECDSA P-256); AttestationError naming what is malformed."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise AttestationError(f"attestation quote malformed: expected bytes, got {type(raw).__name__}",
                               "malformed")
    raw = bytes(raw)
    if len(raw) > _MAX_QUOTE:
        raise AttestationError(f"attestation quote malformed: {len(raw)} bytes, more than the "
                               f"{_MAX_QUOTE} a quote may have", "malformed")
    r = _Reader(raw)
    header = QuoteHeader(*_HEADER.unpack(r.take(HEADER_SIZE, "the header")))
    if header.version != QUOTE_VERSION:
        raise AttestationError(f"attestation quote version {header.version} is not supported "
                               f"(expected {QUOTE_VERSION}: an SGX DCAP ECDSA quote)", "malformed")
    if header.attestation_key_type != ATTESTATION_KEY_ECDSA_P256:
        raise AttestationError(f"attestation quote has attestation key type {header.attestation_key_type}"
                               f" (expected {ATTESTATION_KEY_ECDSA_P256}: ECDSA P-256)", "malformed")
    if header.tee_type != TEE_TYPE_SGX:
        raise AttestationError(f"attestation quote has TEE type {header.tee_type:#x} (expected 0: SGX)",
                               "malformed")
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise AttestationError(f"attestation quote has QE vendor id {header.qe_vendor_id.hex()} "
                               f"(expected Intel's {INTEL_QE_VENDOR_ID.hex()})", "malformed")
    body = parse_report_body(r.take(BODY_SIZE, "the enclave report body"))
    sig_len = r.u32("the signature data length")
    sig_raw = r.take(sig_len, "the signature data")
    if r.pos != len(raw):
        raise AttestationError(f"attestation quote malformed: {len(raw) - r.pos} trailing bytes after "
                               f"the signature data", "malformed")
    s = _Reader(sig_raw, SIGNATURE_DATA_OFFSET)
    isv_sig = s.take(64, "the enclave report signature")
    att_key = s.take(64, "the attestation key")
    qe_report = parse_report_body(s.take(BODY_SIZE, "the QE report"))
    qe_sig = s.take(64, "the QE report signature")
    qe_auth = s.take(s.u16("the QE authentication data size"), "the QE authentication data")
    cert_type = s.u16("the certification data type")
    cert_data = s.take(s.u32("the certification data size"), "the certification data")
    if s.pos != len(sig_raw):
        raise AttestationError(f"attestation quote malformed: the signature data length says {sig_len}"
                               f" bytes but its parts take {s.pos}", "malformed")
    return Quote(header, body, QuoteSignature(isv_sig, att_key, qe_report, qe_sig, qe_auth, cert_type,
                                              cert_data), raw[:SIGNED_SIZE])


# --- binding -------------------------------------------------------------------------------
def new_nonce() -> bytes:
    """A fresh 32-byte nonce: what a party sends the dealer to be put in its quote."""
    return secrets.token_bytes(32)


def nonces_digest(nonces: Sequence[bytes]) -> bytes:
    """SHA-256 of the nonces in order, each with a 4-byte little-endian length prefix."""
    if not nonces:
        raise AttestationError("attestation needs one nonce from each party, got none", "config")
    h = hashlib.sha256()
    for i, nonce in enumerate(nonces):
        if not isinstance(nonce, (bytes, bytearray)) or not 16 <= len(nonce) <= 1024:
            raise AttestationError(f"attestation nonce {i} must be 16 to 1024 bytes", "nonce")
        h.update(len(nonce).to_bytes(4, "little") + bytes(nonce))
    return h.digest()


def report_data_for(tls_public_key_der: bytes, nonces: list[bytes]) -> bytes:
    """The 64 bytes of report data: SHA-256(TLS public key DER) || nonces_digest(nonces)."""
    if not tls_public_key_der:
        raise AttestationError("attestation needs the dealer's TLS public key, got none", "config")
    return hashlib.sha256(bytes(tls_public_key_der)).digest() + nonces_digest(nonces)


def public_key_der(key_or_certificate: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public/private key, an x509 certificate, or certificate PEM/DER bytes."""
    obj = key_or_certificate
    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
        obj = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_certificate(data))
    if isinstance(obj, x509.Certificate):
        obj = obj.public_key()
    if hasattr(obj, "private_bytes"):
        obj = obj.public_key()
    return obj.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def normalize_measurement(value: str | bytes) -> str:
    """A measurement as 64 lower-case hex digits (from hex text or 32 raw bytes)."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value).hex()
    text = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)
    text = text.strip().lower().removeprefix("0x")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise AttestationError(f"a pinned dealer measurement must be 64 hex digits, got {value!r}",
                               "config")
    return text


def parse_measurements(value: str | Iterable[str] | None) -> list[str]:
    """Pinned measurements from a comma/space-separated string (MPC_DEALER_MEASUREMENT) or a list."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [normalize_measurement(item) for item in items]


def sim_measurement(version: str | None = None) -> str:
    """MRENCLAVE of the sim dealer: SHA-256 of b"mpc_ml sim dealer\\0" + the mpc_ml version, in hex.

    The version is the running package's `mpc_ml.__version__` (read from sys.modules: this layer
    does not import the public API), else the installed distribution's. Deterministic, so a party
    can pin it; it measures nothing (sim protects nothing).
    """
    if version is None:
        version = getattr(sys.modules.get("mpc_ml"), "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed_version
        try:
            version = installed_version("mpc_ml")
        except PackageNotFoundError:
            version = "unknown"
    return hashlib.sha256(b"mpc_ml sim dealer\0" + str(version).encode()).hexdigest()


def attestation_transcript(quote: bytes, tls_public_key_der: bytes, nonces: Sequence[bytes]) -> bytes:
    """32 bytes every party computes from what it attested; equal across parties = the same dealer."""
    h = hashlib.sha256(b"mpc_ml dealer attestation v1\0")
    for part in (bytes(quote), bytes(tls_public_key_der), *map(bytes, nonces)):
        h.update(len(part).to_bytes(4, "little") + part)
    return h.digest()


def check_transcripts(transcripts: dict[Any, bytes]) -> bytes:
    """The common transcript of all parties; AttestationError naming the first party that differs."""
    if not transcripts:
        raise AttestationError("attestation transcripts: none to compare", "transcript")
    items = sorted(transcripts.items(), key=lambda kv: str(kv[0]))
    first_party, first = items[0]
    for party, value in items[1:]:
        if not hmac.compare_digest(bytes(value), bytes(first)):
            raise AttestationError(
                f"attestation refused: party {party} attested a different dealer or session than party "
                f"{first_party} (transcript {bytes(value).hex()[:16]}... vs {bytes(first).hex()[:16]}...)",
                "transcript")
    return bytes(first)


# --- the sim platform ----------------------------------------------------------------------
def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        while p > 0x7F:
            p >>= 7
            chunk.append(0x80 | (p & 0x7F))
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _sgx_extension(cpu_svn: bytes, pce_svn: int, fmspc: bytes, ppid: bytes) -> bytes:
    """The Intel SGX extension of a PCK certificate (PPID, TCB, PCE-ID, FMSPC, SGX type)."""
    oid = _SGX_EXTENSION_OID
    pair = lambda sub, value: _der(0x30, _der_oid(f"{oid}.{sub}") + value)  # noqa: E731
    tcb = b"".join(pair(f"2.{i + 1}", _der_int(cpu_svn[i])) for i in range(16))
    tcb += pair("2.17", _der_int(pce_svn)) + pair("2.18", _der(0x04, cpu_svn))
    fields = (pair("1", _der(0x04, ppid)) + pair("2", _der(0x30, tcb)) + pair("3", _der(0x04, bytes(2)))
              + pair("4", _der(0x04, fmspc)) + pair("5", _der(0x0A, b"\0")))
    return _der(0x30, fields)


class SimPlatform:
    """A software stand-in for an SGX platform and its quoting enclave: it PROTECTS NOTHING.

    It holds a sim root CA, a PCK CA and a PCK key (Intel's hierarchy, with an Intel-style SGX
    extension in the PCK certificate) and an ECDSA P-256 attestation key, and signs quotes in the
    SGX DCAP v3 layout: the attestation key signs header+body, the QE report's report data binds
    the attestation key (SHA-256(key || QE auth data)), the PCK key signs the QE report, and the
    certification data (type 5) carries the PEM chain. Whoever runs it can quote any measurement,
    so verifying a sim quote only tests the plumbing. With a seed the keys are deterministic.
    """

    QE_MEASUREMENT = hashlib.sha256(b"mpc_ml sim quoting enclave").digest()
    QE_SIGNER = hashlib.sha256(b"mpc_ml sim quoting enclave signer").digest()
    SIGNER = hashlib.sha256(b"mpc_ml sim dealer signer").digest()
    """Default MRSIGNER of sim quotes."""
    FMSPC = bytes.fromhex("00906ea10000")
    CPU_SVN = bytes([2] * 16)
    PCE_SVN = 13
    QE_SVN = 8

    def __init__(self, seed: bytes | None = None, *, valid_days: int = 3650) -> None:
        def key(label: bytes) -> ec.EllipticCurvePrivateKey:
            if seed is None:
                return ec.generate_private_key(ec.SECP256R1())
            scalar = int.from_bytes(hashlib.sha256(bytes(seed) + b"\0" + label).digest(), "big")
            return ec.derive_private_key(scalar % (_P256_ORDER - 1) + 1, ec.SECP256R1())

        self.root_key, self.pck_ca_key = key(b"root"), key(b"pck ca")
        self.pck_key, self.attestation_key = key(b"pck"), key(b"attestation")
        now = datetime.now(timezone.utc)
        self.not_before, self.not_after = now - timedelta(days=1), now + timedelta(days=valid_days)
        self.root_cert = self.issue("mpc_ml SIM SGX Root CA (protects nothing)", self.root_key, None,
                                    ca=True, path_length=None)
        self.pck_ca_cert = self.issue("mpc_ml SIM SGX PCK Processor CA", self.pck_ca_key,
                                      (self.root_cert, self.root_key), ca=True, path_length=0)
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(_SGX_EXTENSION_OID), _sgx_extension(
            self.CPU_SVN, self.PCE_SVN, self.FMSPC, hashlib.sha256(b"sim ppid" + _raw_public(self.pck_key))
            .digest()[:16]))
        self.pck_cert = self.issue("mpc_ml SIM SGX PCK Certificate", self.pck_key,
                                   (self.pck_ca_cert, self.pck_ca_key), ca=False, extra=(ext,))
        pem = serialization.Encoding.PEM
        self.root_pem = self.root_cert.public_bytes(pem)
        self.certification_data = b"".join(c.public_bytes(pem) for c in
                                           (self.pck_cert, self.pck_ca_cert, self.root_cert))
        self.qe_auth_data = bytes(range(32))
        binding = hashlib.sha256(_raw_public(self.attestation_key) + self.qe_auth_data).digest()
        self.qe_report = pack_report_body(mr_enclave=self.QE_MEASUREMENT, mr_signer=self.QE_SIGNER,
                                          report_data=binding + bytes(32), flags=0x15, xfrm=0x1f,
                                          cpu_svn=self.CPU_SVN, isv_prod_id=1, isv_svn=self.QE_SVN)
        self.qe_report_signature = _raw_signature(self.pck_key, self.qe_report)

    def issue(self, name: str, key: ec.EllipticCurvePrivateKey,
              issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool,
              path_length: int | None = None, extra: Sequence[x509.UnrecognizedExtension] = ()
              ) -> x509.Certificate:
        """A certificate for `key` named `name`, signed by `issuer` (None: self-signed)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpc_ml sim (protects nothing)")])
        issuer_name, signer = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
        usage = dict(digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                     encipher_only=False, decipher_only=False)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.not_before).not_valid_after(self.not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
                   .add_extension(x509.KeyUsage(**usage), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False))
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
        for ext in extra:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(signer, hashes.SHA256())

    def make_quote(self, report_data: bytes, mrenclave: bytes | str | None = None,
                   mrsigner: bytes | str | None = None, *, debug: bool = False, isv_prod_id: int = 0,
                   isv_svn: int = 0) -> bytes:
        """A sim-signed SGX DCAP v3 quote of an enclave (default: `sim_measurement()`) with report_data."""
        if len(report_data) != 64:
            raise ValueError(f"report_data has 64 bytes, got {len(report_data)}")
        mr_enclave = bytes.fromhex(normalize_measurement(mrenclave if mrenclave is not None
                                                         else sim_measurement()))
        mr_signer = bytes.fromhex(normalize_measurement(mrsigner)) if mrsigner is not None else self.SIGNER
        header = _HEADER.pack(QUOTE_VERSION, ATTESTATION_KEY_ECDSA_P256, TEE_TYPE_SGX, self.QE_SVN,
                              self.PCE_SVN, INTEL_QE_VENDOR_ID, SIM_USER_DATA)
        body = pack_report_body(mr_enclave=mr_enclave, mr_signer=mr_signer, report_data=bytes(report_data),
                                flags=0x5 | (DEBUG_FLAG if debug else 0), cpu_svn=self.CPU_SVN,
                                isv_prod_id=isv_prod_id, isv_svn=isv_svn)
        return self.assemble(header + body, self.attestation_key)

    def assemble(self, header_and_body: bytes, attestation_key: ec.EllipticCurvePrivateKey) -> bytes:
        """A quote of header_and_body signed by attestation_key, with this platform's QE report and chain."""
        sig = (_raw_signature(attestation_key, header_and_body) + _raw_public(attestation_key)
               + self.qe_report + self.qe_report_signature
               + len(self.qe_auth_data).to_bytes(2, "little") + self.qe_auth_data
               + CERT_TYPE_PCK_CHAIN.to_bytes(2, "little")
               + len(self.certification_data).to_bytes(4, "little") + self.certification_data)
        return bytes(header_and_body) + len(sig).to_bytes(4, "little") + sig

    @property
    def root_der(self) -> bytes:
        """The sim root certificate, DER (what `sgx_root_ca_der` takes to check sim quotes with dcap-qvl)."""
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    def collateral_json(self, *, tcb_status: str = "UpToDate", qe_tcb_status: str = "UpToDate",
                        advisory_ids: Sequence[str] = (), valid_days: int = 30) -> str:
        """Collateral for this platform's quotes in dcap-qvl's JSON (as a PCCS gives for a real one).

        TCB info and QE identity signed by a sim TCB signing key, CRLs of the root and the PCK CA:
        with `sgx_root_ca_der=self.root_der`, the sgx path (dcap-qvl) verifies sim quotes, so it is
        testable without SGX hardware; `tcb_status` sets the platform's TCB level.
        """
        import json

        now = datetime.now(timezone.utc)
        iso = lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        issued, next_update = iso(now - timedelta(hours=1)), iso(now + timedelta(days=valid_days))
        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing = self.issue("mpc_ml SIM SGX TCB Signing", signing_key, (self.root_cert, self.root_key),
                             ca=False)
        pem = serialization.Encoding.PEM
        chain = (signing.public_bytes(pem) + self.root_pem).decode()

        def crl(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> str:
            return (x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
                    .last_update(now - timedelta(days=1)).next_update(now + timedelta(days=valid_days))
                    .add_extension(x509.CRLNumber(1), critical=False).sign(key, hashes.SHA256())
                    .public_bytes(serialization.Encoding.DER).hex())

        compact = dict(separators=(",", ":"))
        tcb_info = json.dumps({
            "id": "SGX", "version": 3, "issueDate": issued, "nextUpdate": next_update,
            "fmspc": self.FMSPC.hex().upper(), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
            "tcbLevels": [{"tcb": {"sgxtcbcomponents": [{"svn": svn} for svn in self.CPU_SVN],
                                   "pcesvn": self.PCE_SVN},
                           "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": tcb_status,
                           "advisoryIDs": list(advisory_ids)}]}, **compact)
        qe_identity = json.dumps({
            "id": "QE", "version": 2, "issueDate": issued, "nextUpdate": next_update,
            "tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000", "mrsigner": self.QE_SIGNER.hex().upper(),
            "isvprodid": 1, "tcbLevels": [{"tcb": {"isvsvn": self.QE_SVN}, "tcbDate": "2024-03-13T00:00:00Z",
                                           "tcbStatus": qe_tcb_status}]}, **compact)
        return json.dumps({
            "pck_crl_issuer_chain": (self.pck_ca_cert.public_bytes(pem) + self.root_pem).decode(),
            "root_ca_crl": crl(self.root_cert, self.root_key),
            "pck_crl": crl(self.pck_ca_cert, self.pck_ca_key),
            "tcb_info_issuer_chain": chain, "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(signing_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": chain, "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(signing_key, qe_identity.encode()).hex()})


# --- verification --------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedQuote:
    """What a verified quote attests; `simulated` (sim mode or a sim-signed quote): it protects nothing."""

    mode: str
    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    tcb_status: str
    advisory_ids: tuple[str, ...]
    simulated: bool
    quote_sha256: str


def _ecdsa_verify(public: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes) -> bool:
    try:
        der = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
        public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def _load_root(root: Any) -> x509.Certificate:
    if isinstance(root, x509.Certificate):
        return root
    if isinstance(root, SimPlatform):
        return root.root_cert
    if isinstance(root, (str, os.PathLike)) and not str(root).lstrip().startswith("-----"):
        try:
            root = Path(root).read_bytes()
        except OSError as exc:
            raise AttestationError(f"attestation: cannot read the pinned sim root ({exc})",
                                   "config") from None
    data = root.encode() if isinstance(root, str) else bytes(root)
    try:
        return (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise AttestationError(f"attestation: the pinned sim root is not a certificate ({exc})", "config")


def _same_cert_identity(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.subject == b.subject and public_key_der(a) == public_key_der(b)


def _verify_pck_chain(quote: Quote, root: x509.Certificate, now: datetime) -> ec.EllipticCurvePublicKey:
    """Check the certification data's PEM chain up to the pinned root; the PCK leaf's public key."""
    sig = quote.signature
    if sig.certification_data_type != CERT_TYPE_PCK_CHAIN:
        raise AttestationError(f"attestation refused: certification data type {sig.certification_data_type}"
                               f" (expected {CERT_TYPE_PCK_CHAIN}: a PCK certificate chain)", "chain")
    try:
        return _check_chain(x509.load_pem_x509_certificates(sig.certification_data.rstrip(b"\0")), root, now)
    except AttestationError:
        raise
    except Exception as exc:  # certificates parse lazily: any failure on these untrusted bytes refuses
        raise AttestationError(f"attestation refused: the PCK certificate chain does not parse "
                               f"({type(exc).__name__}: {exc})", "chain") from None


def _check_chain(certs: list[x509.Certificate], root: x509.Certificate,
                 now: datetime) -> ec.EllipticCurvePublicKey:
    if certs and _same_cert_identity(certs[-1], root):
        certs = certs[:-1]
    if not certs:
        raise AttestationError("attestation refused: the quote carries no PCK certificate", "chain")
    chain = [*certs, root]
    for i, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationError(f"attestation refused: certificate {cert.subject.rfc4514_string()} is "
                                   f"not valid now (valid {cert.not_valid_before_utc} to "
                                   f"{cert.not_valid_after_utc})", "chain")
        if i == len(chain) - 1:
            break
        issuer = chain[i + 1]
        try:
            is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            if not is_ca:
                raise ValueError("the issuer is not a CA")
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationError(
                f"attestation refused: the PCK certificate chain does not lead to the pinned sim root "
                f"({cert.subject.rfc4514_string()} not issued by {issuer.subject.rfc4514_string()}: "
                f"{exc or 'bad signature'})", "chain") from None
    pck = certs[0].public_key()
    if not isinstance(pck, ec.EllipticCurvePublicKey) or not isinstance(pck.curve, ec.SECP256R1):
        raise AttestationError("attestation refused: the PCK key is not ECDSA P-256", "chain")
    return pck


def _verify_signatures(quote: Quote, pck: ec.EllipticCurvePublicKey | None) -> None:
    """QE report signed by the PCK key (when given), binding the attestation key that signed header+body."""
    sig = quote.signature
    if pck is not None and not _ecdsa_verify(pck, sig.qe_report_signature, sig.qe_report.raw):
        raise AttestationError("attestation refused: the QE report signature does not verify under the "
                               "PCK certificate's key", "signature")
    binding = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest()
    if not hmac.compare_digest(binding + bytes(32), sig.qe_report.report_data):
        raise AttestationError("attestation refused: the attestation key is not the one the QE report "
                               "certifies (re-signed by another key?)", "signature")
    try:
        att = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + sig.attestation_key)
    except ValueError:
        raise AttestationError("attestation refused: the attestation key is not a P-256 point", "signature")
    if not _ecdsa_verify(att, sig.isv_signature, quote.signed):
        raise AttestationError("attestation refused: the quote signature over header and enclave report "
                               "does not verify under the attestation key", "signature")


def _verify_sgx_chain(raw: bytes, quote: Quote, collateral: Any, root_ca_der: bytes | None,
                      now: int) -> tuple[str, tuple[str, ...]]:
    """dcap-qvl's full check (PCK chain, CRLs, TCB info, QE identity, signatures); (status, advisories)."""
    try:
        import dcap_qvl
    except ImportError:
        raise AttestationError("sgx attestation: the attest extra (dcap-qvl) is not installed "
                               "(pip install 'mpc_ml[attest]')", "unavailable") from None
    if collateral is None:
        raise AttestationError("sgx attestation needs the quote's collateral (TCB info, QE identity and "
                               "CRLs from a PCCS, see fetch_collateral); none was given", "config")
    if quote.header.user_data == SIM_USER_DATA and root_ca_der is None:
        raise AttestationError("attestation refused: the dealer sent a sim quote (software-signed, it "
                               "protects nothing) but sgx attestation against Intel's root was asked for",
                               "chain")
    try:
        if not isinstance(collateral, dcap_qvl.QuoteCollateralV3):
            text = collateral.decode() if isinstance(collateral, (bytes, bytearray)) else str(collateral)
            collateral = dcap_qvl.QuoteCollateralV3.from_json(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AttestationError(f"sgx attestation: the collateral does not parse ({exc})", "config")
    try:
        if root_ca_der is None:
            report = dcap_qvl.verify(raw, collateral, now)
        else:
            report = dcap_qvl.verify_with_root_ca(raw, collateral, bytes(root_ca_der), now)
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        if "Debug mode" in text and "QE report" not in text:
            raise AttestationError("attestation refused: the dealer's enclave runs in debug mode (the DEBUG "
                                   "attribute is set: its host can read its memory)", "debug") from None
        if "TCB status is invalid" in text:
            raise AttestationError(f"attestation refused: the platform's TCB is revoked (dcap-qvl: {text})",
                                   "tcb") from None
        raise AttestationError(f"attestation refused: the quote's certificate chain or signatures do not "
                               f"verify (dcap-qvl: {text})", "chain") from None
    return str(report.status), tuple(report.advisory_ids)


def verify_quote(quote: bytes, *, mode: str, expected_measurements: str | Sequence[str],
                 expected_report_data: bytes, sim_root: Any = None,
                 allowed_tcb_statuses: Sequence[str] = DEFAULT_TCB_STATUSES, collateral: Any = None,
                 sgx_root_ca_der: bytes | None = None, expected_signers: str | Sequence[str] | None = None,
                 now: float | None = None) -> VerifiedQuote:
    """Verify the dealer's quote, or raise AttestationError naming the first check that failed.

    Checks, in order: the layout (`parse_quote`); the signature chain (sim: the PCK chain up to
    `sim_root`, which the party must be given explicitly, the QE report signature, the attestation
    key binding and the quote signature, all with `cryptography`; sgx: the same and the PCK chain,
    CRLs, TCB info and QE identity in `collateral` against Intel's root, or `sgx_root_ca_der`, with
    dcap-qvl); the TCB status in `allowed_tcb_statuses` (sgx; fail closed); the debug bit off;
    MRENCLAVE in `expected_measurements` (and MRSIGNER in `expected_signers` when given); the report
    data's first half = SHA-256 of the TLS key the party is talking to, its second half = this
    session's nonces. A sim result has `simulated=True`: it protects nothing.
    """
    if mode not in MODES:
        raise AttestationError(f"attestation mode {mode!r} is not one of {MODES}", "config")
    pinned = parse_measurements(expected_measurements)
    if not pinned:
        raise AttestationError("attestation needs a pinned dealer measurement (dealer_measurement, "
                               "MPC_DEALER_MEASUREMENT or the deployment file's list)", "config")
    if len(expected_report_data) != 64:
        raise AttestationError(f"attestation: expected report data has 64 bytes, got "
                               f"{len(expected_report_data)}", "config")
    when = time.time() if now is None else float(now)
    parsed = parse_quote(quote)
    status, advisories = "Simulated", ()
    if mode == "sim":
        if sim_root is None:
            raise AttestationError("sim attestation needs the sim root certificate, given explicitly "
                                   "(sim protects nothing)", "config")
        pck = _verify_pck_chain(parsed, _load_root(sim_root), datetime.fromtimestamp(when, timezone.utc))
        _verify_signatures(parsed, pck)
    else:
        status, advisories = _verify_sgx_chain(bytes(quote), parsed, collateral, sgx_root_ca_der, int(when))
        _verify_signatures(parsed, None)  # dcap-qvl checked them; a second, independent look
        if status not in tuple(allowed_tcb_statuses):
            raise AttestationError(
                f"attestation refused: the platform's TCB status is {status}"
                + (f" (advisories {', '.join(advisories)})" if advisories else "")
                + f"; accepted: {', '.join(allowed_tcb_statuses) or 'none'} (a deployment file may allow "
                "others by name)", "tcb")
    body = parsed.body
    if body.debug:
        raise AttestationError("attestation refused: the dealer's enclave runs in debug mode (the DEBUG "
                               "attribute is set: its host can read its memory)", "debug")
    got = body.mr_enclave.hex()
    if got not in pinned:
        raise AttestationError(f"attestation refused: dealer measurement {got} is not the pinned "
                               f"measurement {' or '.join(pinned)}", "measurement")
    if expected_signers is not None:
        signers = parse_measurements(expected_signers)
        if body.mr_signer.hex() not in signers:
            raise AttestationError(f"attestation refused: dealer signer measurement (MRSIGNER) "
                                   f"{body.mr_signer.hex()} is not the pinned {' or '.join(signers)}",
                                   "signer")
    data = body.report_data
    if not hmac.compare_digest(data[:32], bytes(expected_report_data[:32])):
        raise AttestationError(f"attestation refused: the dealer's TLS key is not the attested key (quote "
                               f"binds key hash {data[:32].hex()}, the TLS session's key hashes to "
                               f"{bytes(expected_report_data[:32]).hex()})", "tls_key")
    if not hmac.compare_digest(data[32:], bytes(expected_report_data[32:])):
        raise AttestationError("attestation refused: the quote's nonce hash differs from this session's "
                               "nonces (a replayed quote, or one made for another session)", "nonce")
    return VerifiedQuote(mode=mode, mrenclave=got, mrsigner=body.mr_signer.hex(),
                         isv_prod_id=body.isv_prod_id, isv_svn=body.isv_svn, report_data=data,
                         tcb_status=status, advisory_ids=advisories,
                         simulated=mode == "sim" or parsed.header.user_data == SIM_USER_DATA,
                         quote_sha256=hashlib.sha256(bytes(quote)).hexdigest())


# --- the dealer's side ---------------------------------------------------------------------
_DEVICE = "/dev/attestation"
_device_lock = threading.Lock()


def read_gramine_quote(report_data: bytes, *, device: str = _DEVICE) -> bytes:
    """An SGX quote with report_data from Gramine: write /dev/attestation/user_report_data, read .../quote."""
    if len(report_data) != 64:
        raise ValueError(f"report_data has 64 bytes, got {len(report_data)}")
    base = Path(device)
    if not (base / "quote").exists():
        raise AttestationError(f"sgx attestation needs Gramine's {device} (run the dealer inside a Gramine "
                               "SGX enclave with sgx.remote_attestation = \"dcap\", see "
                               "launchers/sgx/README.md); it is absent here", "unavailable")
    kind_file = base / "attestation_type"
    if kind_file.exists():
        kind = kind_file.read_text().strip()
        if kind != "dcap":
            raise AttestationError(f"sgx attestation needs DCAP, but {kind_file} says {kind!r} (set "
                                   "sgx.remote_attestation = \"dcap\" in the manifest)", "unavailable")
    with _device_lock:
        try:
            (base / "user_report_data").write_bytes(bytes(report_data))
            quote = (base / "quote").read_bytes()
        except OSError as exc:
            raise AttestationError(f"sgx attestation: Gramine's {device} failed ({exc})", "unavailable")
    if parse_quote(quote).body.report_data != bytes(report_data):
        raise AttestationError("sgx attestation: Gramine's quote does not carry the report data written",
                               "unavailable")
    return quote


def make_dealer_quote(mode: str, report_data: bytes, *, sim_platform: SimPlatform | None = None,
                      device: str = _DEVICE) -> bytes:
    """The dealer's quote of report_data: sim (sim_platform, `sim_measurement()`) or sgx (Gramine)."""
    if mode == "sim":
        if sim_platform is None:
            raise AttestationError("sim attestation needs a SimPlatform", "config")
        return sim_platform.make_quote(report_data)
    if mode == "sgx":
        return read_gramine_quote(report_data, device=device)
    raise AttestationError(f"attestation mode {mode!r} is not one of {MODES}", "config")


def dealer_measurement(mode: str, *, device: str = _DEVICE) -> str:
    """The dealer's own measurement (MRENCLAVE, hex), for its first line `dealer measurement: <hex>`."""
    if mode == "sim":
        return sim_measurement()
    if mode == "sgx":
        return parse_quote(read_gramine_quote(bytes(64), device=device)).body.mr_enclave.hex()
    raise AttestationError(f"attestation mode {mode!r} is not one of {MODES}", "config")


def fetch_collateral(quote: bytes, pccs_url: str = INTEL_PCS_URL) -> str:
    """The quote's collateral as JSON (dcap-qvl's QuoteCollateralV3), fetched from a PCCS (networking)."""
    try:
        import dcap_qvl
    except ImportError:
        raise AttestationError("sgx attestation: the attest extra (dcap-qvl) is not installed "
                               "(pip install 'mpc_ml[attest]')", "unavailable") from None
    import asyncio
    try:
        return asyncio.run(dcap_qvl.get_collateral(pccs_url, bytes(quote))).to_json()
    except (ValueError, RuntimeError) as exc:
        raise AttestationError(f"sgx attestation: no collateral from {pccs_url} ({exc})",
                               "unavailable") from None


__all__ = ["AttestationError", "DEFAULT_TCB_STATUSES", "MODES", "Quote", "QuoteHeader", "QuoteSignature",
           "ReportBody", "SIM_WARNING", "SimPlatform", "VerifiedQuote", "attestation_transcript",
           "check_transcripts", "dealer_measurement", "fetch_collateral", "make_dealer_quote", "new_nonce",
           "nonces_digest", "normalize_measurement", "pack_report_body", "parse_measurements", "parse_quote",
           "parse_report_body", "public_key_der", "read_gramine_quote", "report_data_for", "sim_measurement",
           "verify_quote"]
