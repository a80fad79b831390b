"""The dealer's attestation (providers/attestation.py): SGX DCAP quote v3 parsing, the RA-TLS
report data binding, sim quotes, and every refusal a party makes before it accepts a correlation.

Fixtures are generated here: quotes that SimPlatform signs in the SGX layout, and tampered copies
of them. Header and body are covered by the attestation key's signature, the QE report by the
PCK key's, the attestation key and QE auth data by the QE report's report data, the PCK
certificate by the chain: so no change to a quote may be accepted except where it leaves every
signed or certified value the same (only the PEM text of the certification data can do that).
With dcap-qvl installed (the `attest` extra) the sgx path runs on the same quotes, against the
sim root and collateral that SimPlatform makes; without it, the sgx path's refusal is tested.
"""
from __future__ import annotations

import hashlib
import struct
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc_ml.providers import attestation as A
from mpc_ml.providers.attestation import AttestationError

PLATFORM = A.SimPlatform(seed=b"test_attestation")
TLS_KEY = ec.generate_private_key(ec.SECP256R1())
TLS_DER = A.public_key_der(TLS_KEY)
NONCES = [A.new_nonce(), A.new_nonce(), A.new_nonce()]
REPORT_DATA = A.report_data_for(TLS_DER, NONCES)
MEASUREMENT = A.sim_measurement()
QUOTE = PLATFORM.make_quote(REPORT_DATA)
PARSED = A.parse_quote(QUOTE)

# offsets inside the quote (Intel's v3 layout)
BODY = A.HEADER_SIZE
SIG = A.SIGNATURE_DATA_OFFSET
ATT_KEY = SIG + 64
QE_REPORT = ATT_KEY + 64
QE_SIG = QE_REPORT + A.BODY_SIZE
QE_AUTH = QE_SIG + 64 + 2
CERT_TYPE = QE_AUTH + len(PARSED.signature.qe_auth_data)
CERT_DATA = CERT_TYPE + 2 + 4

try:
    import dcap_qvl  # noqa: F401
    HAVE_DCAP = True
except ImportError:
    HAVE_DCAP = False
needs_dcap = pytest.mark.skipif(not HAVE_DCAP, reason="the attest extra (dcap-qvl) is not installed")


def verify(quote: bytes, **kw) -> A.VerifiedQuote:
    args = dict(mode="sim", expected_measurements=[MEASUREMENT], expected_report_data=REPORT_DATA,
                sim_root=PLATFORM.root_pem)
    args.update(kw)
    return A.verify_quote(quote, **args)


def refused(quote: bytes, reason: str, *words: str, **kw) -> str:
    """Verify and expect a refusal for `reason`, whose message names the words; the message."""
    with pytest.raises(AttestationError) as info:
        verify(quote, **kw)
    message = str(info.value)
    assert info.value.reason == reason, message
    assert "attestation" in message or "measurement" in message, message
    for word in words:
        assert word in message, message
    return message


def flip(quote: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(quote)
    out[offset] ^= mask
    return bytes(out)


def resign(header_and_body: bytes, platform: A.SimPlatform = PLATFORM) -> bytes:
    """A quote of header_and_body signed by a fresh attestation key that no QE report certifies."""
    return platform.assemble(header_and_body, ec.generate_private_key(ec.SECP256R1()))


# -- what verifies -------------------------------------------------------------------------
def test_a_sim_quote_verifies_and_says_it_protects_nothing():
    v = verify(QUOTE)
    assert v.mode == "sim" and v.simulated and v.tcb_status == "Simulated"
    assert v.mrenclave == MEASUREMENT and v.report_data == REPORT_DATA
    assert v.mrsigner == A.SimPlatform.SIGNER.hex()
    assert v.quote_sha256 == hashlib.sha256(QUOTE).hexdigest()
    assert "protects nothing" in A.SIM_WARNING and "sim" in A.SIM_WARNING
    assert "protects nothing" in A.SimPlatform.__doc__.lower().replace("\n", " ")


def test_the_quote_is_in_the_sgx_v3_layout():
    version, key_type, tee, qe_svn, pce_svn, vendor, user = struct.unpack_from("<HHIHH16s20s", QUOTE)
    assert (version, key_type, tee, vendor) == (3, 2, 0, A.INTEL_QE_VENDOR_ID)
    assert (qe_svn, pce_svn, user) == (PLATFORM.QE_SVN, PLATFORM.PCE_SVN, A.SIM_USER_DATA)
    assert QUOTE[BODY + 64:BODY + 96].hex() == MEASUREMENT                  # MRENCLAVE
    assert QUOTE[BODY + 128:BODY + 160] == A.SimPlatform.SIGNER              # MRSIGNER
    assert QUOTE[BODY + 320:BODY + 384] == REPORT_DATA                       # report data
    assert int.from_bytes(QUOTE[BODY + 48:BODY + 56], "little") & A.DEBUG_FLAG == 0
    assert int.from_bytes(QUOTE[A.SIGNED_SIZE:SIG], "little") == len(QUOTE) - SIG
    qe = A.parse_report_body(QUOTE[QE_REPORT:QE_SIG])
    key_hash = hashlib.sha256(QUOTE[ATT_KEY:QE_REPORT] + PARSED.signature.qe_auth_data).digest()
    assert qe.report_data == key_hash + bytes(32) and qe.isv_prod_id == 1
    assert int.from_bytes(QUOTE[CERT_TYPE:CERT_TYPE + 2], "little") == 5
    chain = QUOTE[CERT_DATA:]
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----") and chain.count(b"BEGIN") == 3
    s = PARSED.signature
    assert (s.isv_signature, s.attestation_key) == (QUOTE[SIG:ATT_KEY], QUOTE[ATT_KEY:QE_REPORT])
    assert PARSED.signed == QUOTE[:A.SIGNED_SIZE]


@needs_dcap
def test_dcap_qvl_reads_the_sim_quote_as_we_do():
    import dcap_qvl
    q = dcap_qvl.parse_quote(QUOTE)
    assert q.is_sgx() and q.header.version == 3 and q.header.qe_svn == PLATFORM.QE_SVN
    assert q.report.mr_enclave.hex() == MEASUREMENT and q.report.report_data == REPORT_DATA
    assert q.report.mr_signer == A.SimPlatform.SIGNER
    assert q.fmspc() == PLATFORM.FMSPC.hex().upper()


def test_report_data_binds_the_tls_key_and_the_nonces_in_order():
    rd = A.report_data_for(TLS_DER, NONCES)
    assert len(rd) == 64 and rd[:32] == hashlib.sha256(TLS_DER).digest()
    prefixed = b"".join(len(n).to_bytes(4, "little") + n for n in NONCES)
    assert rd[32:] == hashlib.sha256(prefixed).digest() == A.nonces_digest(NONCES)
    assert A.report_data_for(TLS_DER, NONCES[::-1])[32:] != rd[32:]
    a, b = b"x" * 16, b"y" * 17
    assert A.nonces_digest([a + b[:1], b[1:]]) != A.nonces_digest([a, b])  # lengths are in the hash
    with pytest.raises(AttestationError, match="nonce"):
        A.report_data_for(TLS_DER, [])
    with pytest.raises(AttestationError, match="nonce 1"):
        A.report_data_for(TLS_DER, [NONCES[0], b"short"])
    with pytest.raises(AttestationError, match="TLS public key"):
        A.report_data_for(b"", NONCES)


def test_public_key_der_is_the_same_from_a_key_its_certificate_or_its_pem():
    der = A.public_key_der(PLATFORM.root_key)
    assert der == A.public_key_der(PLATFORM.root_key.public_key()) == A.public_key_der(PLATFORM.root_cert)
    assert der == A.public_key_der(PLATFORM.root_pem) == A.public_key_der(PLATFORM.root_der)


def test_several_pinned_measurements_and_their_spellings():
    other = hashlib.sha256(b"other build").hexdigest()
    assert verify(QUOTE, expected_measurements=[other, MEASUREMENT.upper()]).mrenclave == MEASUREMENT
    assert verify(QUOTE, expected_measurements=f"{other},{MEASUREMENT}").mrenclave == MEASUREMENT
    assert A.parse_measurements(f"{other}, 0x{MEASUREMENT}") == [other, MEASUREMENT]
    assert A.parse_measurements(None) == [] and A.normalize_measurement(bytes(32)) == "0" * 64
    with pytest.raises(AttestationError, match="64 hex digits"):
        A.parse_measurements("abc")


def test_sim_measurement_is_deterministic_and_follows_the_version():
    assert A.sim_measurement() == A.sim_measurement() == A.dealer_measurement("sim")
    assert A.sim_measurement("0.1.0") == hashlib.sha256(b"mpc_ml sim dealer\0" + b"0.1.0").hexdigest()
    assert A.sim_measurement("9.9") != A.sim_measurement("0.1.0")


def test_a_seeded_platform_has_the_same_root_key_on_both_sides():
    again = A.SimPlatform(seed=b"test_attestation")
    assert again.root_pem != PLATFORM.root_pem  # a new certificate ...
    verify(QUOTE, sim_root=again.root_pem)      # ... of the same key and name: the same root
    refused(QUOTE, "chain", "pinned sim root", sim_root=A.SimPlatform(seed=b"another").root_pem)


def test_the_dealer_side_makes_a_quote_that_verifies():
    quote = A.make_dealer_quote("sim", REPORT_DATA, sim_platform=PLATFORM)
    assert verify(quote).mrenclave == MEASUREMENT
    with pytest.raises(AttestationError, match="SimPlatform"):
        A.make_dealer_quote("sim", REPORT_DATA)
    with pytest.raises(AttestationError, match="mode"):
        A.make_dealer_quote("tdx", REPORT_DATA)


# -- what a party refuses ------------------------------------------------------------------
def test_a_wrong_measurement_is_refused_naming_both():
    pinned = hashlib.sha256(b"the reviewed build").hexdigest()
    refused(QUOTE, "measurement", "measurement", MEASUREMENT, pinned, expected_measurements=[pinned])
    other = PLATFORM.make_quote(REPORT_DATA, mrenclave=pinned)
    refused(other, "measurement", "measurement", pinned, MEASUREMENT)


def test_a_pinned_signer_is_checked_when_given():
    verify(QUOTE, expected_signers=[A.SimPlatform.SIGNER.hex()])
    refused(QUOTE, "signer", "MRSIGNER", expected_signers=["ab" * 32])


def test_a_debug_enclave_is_refused():
    refused(PLATFORM.make_quote(REPORT_DATA, debug=True), "debug", "debug")
    # setting the bit in a production quote breaks its signature first
    refused(flip(QUOTE, BODY + 48, A.DEBUG_FLAG), "signature", "quote signature")


def test_a_dealer_whose_tls_key_is_not_the_attested_key_is_refused():
    other = A.public_key_der(ec.generate_private_key(ec.SECP256R1()))
    refused(QUOTE, "tls_key", "TLS key", expected_report_data=A.report_data_for(other, NONCES))


def test_a_replayed_quote_or_a_wrong_nonce_is_refused():
    fresh = [A.new_nonce() for _ in NONCES]
    refused(QUOTE, "nonce", "nonce", "replayed", expected_report_data=A.report_data_for(TLS_DER, fresh))
    refused(QUOTE, "nonce", "nonce", expected_report_data=A.report_data_for(TLS_DER, NONCES[::-1]))
    refused(QUOTE, "nonce", "nonce", expected_report_data=A.report_data_for(TLS_DER, NONCES[:2]))


@pytest.mark.parametrize("length", [0, 1, 47, 48, 200, A.SIGNED_SIZE, A.SIGNED_SIZE + 3, SIG, SIG + 63,
                                    ATT_KEY + 10, QE_REPORT + 383, QE_SIG + 64, QE_AUTH - 1, QE_AUTH + 5,
                                    CERT_TYPE + 1, CERT_DATA + 4, CERT_DATA + 600, len(QUOTE) - 1])
def test_a_truncated_quote_is_refused(length):
    refused(QUOTE[:length], "malformed", "truncated")


def test_trailing_bytes_and_inconsistent_lengths_are_refused():
    refused(QUOTE + b"\0", "malformed", "trailing")
    longer = QUOTE[:A.SIGNED_SIZE] + (len(QUOTE) - SIG + 1).to_bytes(4, "little") + QUOTE[SIG:] + b"\0"
    refused(longer, "malformed", "parts take")
    refused(b"\0" * 5000, "malformed", "version 0")
    refused("not bytes", "malformed", "bytes")  # type: ignore[arg-type]
    refused(QUOTE + bytes(70000), "malformed", "more than")


@pytest.mark.parametrize("offset, words", [
    (SIG, "quote signature"), (SIG + 40, "quote signature"), (ATT_KEY + 5, "attestation key"),
    (QE_REPORT + 64, "QE report signature"), (QE_SIG + 1, "QE report signature"), (QE_AUTH + 3, "QE report")])
def test_a_flipped_signature_byte_is_refused(offset, words):
    refused(flip(QUOTE, offset), "signature", words)


@pytest.mark.parametrize("offset", [8, 10, 30, 47, BODY, BODY + 64, BODY + 128, BODY + 258, BODY + 330,
                                    BODY + 383])
def test_a_changed_header_or_body_byte_breaks_the_signature(offset):
    refused(flip(QUOTE, offset), "signature", "quote signature")


def test_a_quote_re_signed_by_an_uncertified_key_is_refused():
    refused(resign(QUOTE[:A.SIGNED_SIZE]), "signature", "QE report certifies")
    # the attacker's point: claim the pinned measurement with its own key
    forged = bytearray(QUOTE[:A.SIGNED_SIZE])
    forged[BODY + 64:BODY + 96] = hashlib.sha256(b"pinned").digest()
    refused(resign(bytes(forged)), "signature", "QE report certifies",
            expected_measurements=[hashlib.sha256(b"pinned").hexdigest()])


def test_a_quote_from_another_platform_is_refused_by_the_chain():
    impostor = A.SimPlatform()
    refused(impostor.make_quote(REPORT_DATA), "chain", "pinned sim root")


def test_a_quote_with_a_broken_or_missing_chain_is_refused():
    refused(flip(QUOTE, CERT_TYPE), "chain", "certification data type 4")
    no_chain = QUOTE[:CERT_TYPE + 2] + (0).to_bytes(4, "little")
    no_chain = no_chain[:A.SIGNED_SIZE] + (len(no_chain) - SIG).to_bytes(4, "little") + no_chain[SIG:]
    refused(no_chain, "chain", "PCK certificate")
    refused(QUOTE, "chain", "not valid now", now=time.time() + 20 * 365 * 86400)


@pytest.mark.parametrize("offset, value, words", [
    (0, 4, "version 4"), (0, 2, "version 2"), (2, 3, "attestation key type 3"), (4, 0x81, "TEE type 0x81")])
def test_a_wrong_version_or_type_is_refused(offset, value, words):
    bad = bytearray(QUOTE)
    bad[offset:offset + 2] = value.to_bytes(2, "little")
    refused(bytes(bad), "malformed", words)
    refused(resign(bytes(bad[:A.SIGNED_SIZE])), "malformed", words)  # whoever signed it


def test_a_wrong_qe_vendor_is_refused():
    refused(flip(QUOTE, 12), "malformed", "QE vendor id")


def test_bad_settings_are_refused_not_ignored():
    refused(QUOTE, "config", "sim root", sim_root=None)
    refused(QUOTE, "config", "pinned dealer measurement", expected_measurements=[])
    refused(QUOTE, "config", "64 hex digits", expected_measurements=["00ff"])
    refused(QUOTE, "config", "mode", mode="none")
    refused(QUOTE, "config", "64 bytes", expected_report_data=REPORT_DATA[:32])
    refused(QUOTE, "config", "sim root", sim_root=b"not a certificate")
    refused(QUOTE, "config", "sim root", sim_root="/nonexistent/sim-root.pem")


def test_the_parties_compare_transcripts():
    t = A.attestation_transcript(QUOTE, TLS_DER, NONCES)
    assert len(t) == 32 and A.check_transcripts({0: t, 1: t, 2: t}) == t
    other = A.attestation_transcript(PLATFORM.make_quote(REPORT_DATA), TLS_DER, NONCES)  # a second quote
    with pytest.raises(AttestationError, match="party 2 attested a different dealer") as info:
        A.check_transcripts({0: t, 1: t, 2: other})
    assert info.value.reason == "transcript"
    with pytest.raises(AttestationError):
        A.check_transcripts({})


# -- every mutation: refused, or it changed nothing that anything signs ---------------------
def _accepted_only_if_nothing_signed_changed(mutated: bytes, offset: int) -> None:
    try:
        v = verify(mutated)
    except AttestationError as exc:
        assert "attestation" in str(exc) or "measurement" in str(exc)
        return
    # accepted: only the PEM text of the certification data may differ, decoding to the same chain
    assert offset >= CERT_DATA, f"a change at offset {offset} was accepted"
    assert mutated[:CERT_DATA] == QUOTE[:CERT_DATA]
    assert (v.mrenclave, v.report_data) == (MEASUREMENT, REPORT_DATA)


@pytest.mark.filterwarnings("ignore")  # cryptography warns about the mangled certificates it parses
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offset=st.integers(0, len(QUOTE) - 1), mask=st.integers(1, 255))
def test_random_byte_flips_are_refused_unless_they_change_nothing_signed(offset, mask):
    _accepted_only_if_nothing_signed_changed(flip(QUOTE, offset, mask), offset)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, CERT_DATA - 1), mask=st.integers(1, 255))
def test_random_flips_before_the_certificates_are_always_refused(offset, mask):
    with pytest.raises(AttestationError):
        verify(flip(QUOTE, offset, mask))


@settings(max_examples=150, deadline=None)
@given(length=st.integers(0, len(QUOTE) - 1))
def test_random_truncations_are_refused(length):
    refused(QUOTE[:length], "malformed", "truncated")


@settings(max_examples=60, deadline=None)
@given(extra=st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_refused(extra):
    refused(QUOTE + extra, "malformed")


# -- the sgx path ---------------------------------------------------------------------------
def test_sgx_without_the_attest_extra_is_a_clear_refusal(monkeypatch):
    monkeypatch.setitem(sys.modules, "dcap_qvl", None)  # `import dcap_qvl` raises ImportError
    msg = refused(QUOTE, "unavailable", "the attest extra (dcap-qvl) is not installed", mode="sgx",
                  collateral=PLATFORM.collateral_json())
    assert "pip install" in msg
    with pytest.raises(AttestationError, match="dcap-qvl"):
        A.fetch_collateral(QUOTE)


def test_sgx_without_collateral_is_refused():
    reason = "config" if HAVE_DCAP else "unavailable"
    refused(QUOTE, reason, "sgx attestation", mode="sgx")


@needs_dcap
def test_sgx_verifies_a_sim_quote_against_the_sim_root_with_dcap_qvl():
    v = verify(QUOTE, mode="sgx", collateral=PLATFORM.collateral_json(), sgx_root_ca_der=PLATFORM.root_der)
    assert (v.mode, v.tcb_status, v.mrenclave) == ("sgx", "UpToDate", MEASUREMENT)
    assert v.simulated  # a sim-signed quote, even on the sgx path: it protects nothing


@needs_dcap
def test_a_sim_quote_fails_the_real_chain_check():
    collateral = PLATFORM.collateral_json()
    refused(QUOTE, "chain", "sim quote", mode="sgx", collateral=collateral)  # against Intel's root
    # without the sim tag in its header (re-signed to keep the signatures), Intel's root still refuses it
    untagged = bytearray(QUOTE[:A.SIGNED_SIZE])
    untagged[28:48] = bytes(20)
    quote = PLATFORM.assemble(bytes(untagged), PLATFORM.attestation_key)
    assert not verify(quote, mode="sgx", collateral=collateral, sgx_root_ca_der=PLATFORM.root_der).simulated
    refused(quote, "chain", "dcap-qvl", mode="sgx", collateral=collateral)
    refused(QUOTE, "chain", "dcap-qvl", mode="sgx", collateral=collateral,
            sgx_root_ca_der=A.SimPlatform().root_der)


@needs_dcap
@pytest.mark.parametrize("status", ["OutOfDate", "SWHardeningNeeded", "ConfigurationNeeded",
                                    "OutOfDateConfigurationNeeded"])
def test_sgx_fails_closed_on_a_tcb_status_not_allowed_by_name(status):
    collateral = PLATFORM.collateral_json(tcb_status=status, advisory_ids=["INTEL-SA-00615"])
    kw = dict(mode="sgx", collateral=collateral, sgx_root_ca_der=PLATFORM.root_der)
    refused(QUOTE, "tcb", status, "INTEL-SA-00615", "UpToDate", **kw)
    v = verify(QUOTE, allowed_tcb_statuses=("UpToDate", status), **kw)
    assert v.tcb_status == status and v.advisory_ids == ("INTEL-SA-00615",)


@needs_dcap
def test_sgx_refuses_a_revoked_tcb_even_when_allowed():
    collateral = PLATFORM.collateral_json(tcb_status="Revoked")
    refused(QUOTE, "tcb", "revoked", mode="sgx", collateral=collateral, sgx_root_ca_der=PLATFORM.root_der,
            allowed_tcb_statuses=("UpToDate", "Revoked"))


@needs_dcap
def test_sgx_refuses_debug_tampering_replay_and_stale_collateral():
    kw = dict(mode="sgx", collateral=PLATFORM.collateral_json(), sgx_root_ca_der=PLATFORM.root_der)
    refused(PLATFORM.make_quote(REPORT_DATA, debug=True), "debug", "debug", **kw)
    refused(flip(QUOTE, BODY + 64), "chain", "dcap-qvl", **kw)
    refused(resign(QUOTE[:A.SIGNED_SIZE]), "chain", "dcap-qvl", **kw)
    refused(QUOTE, "measurement", "measurement", expected_measurements=["ab" * 32], **kw)
    refused(QUOTE, "nonce", "nonce", expected_report_data=A.report_data_for(TLS_DER, [A.new_nonce()]), **kw)
    refused(QUOTE, "chain", "dcap-qvl", now=time.time() + 90 * 86400, **kw)  # collateral expired
    refused(QUOTE, "config", "collateral", mode="sgx", collateral="{not json",
            sgx_root_ca_der=PLATFORM.root_der)


# -- Gramine's /dev/attestation -------------------------------------------------------------
def test_read_gramine_quote_says_when_there_is_no_enclave(tmp_path):
    with pytest.raises(AttestationError, match="Gramine's .*missing") as info:
        A.read_gramine_quote(REPORT_DATA, device=str(tmp_path / "missing"))
    assert info.value.reason == "unavailable" and "launchers/sgx" in str(info.value)
    if not A.Path("/dev/attestation/quote").exists():
        with pytest.raises(AttestationError, match="Gramine's /dev/attestation .* absent"):
            A.read_gramine_quote(REPORT_DATA)


def test_read_gramine_quote_writes_report_data_and_reads_the_quote(tmp_path):
    # a stand-in for Gramine's pseudo-files: the quote Gramine would return for REPORT_DATA
    (tmp_path / "attestation_type").write_text("dcap\n")
    (tmp_path / "user_report_data").write_bytes(bytes(64))
    (tmp_path / "quote").write_bytes(QUOTE)
    assert A.read_gramine_quote(REPORT_DATA, device=str(tmp_path)) == QUOTE
    assert (tmp_path / "user_report_data").read_bytes() == REPORT_DATA
    assert A.make_dealer_quote("sgx", REPORT_DATA, device=str(tmp_path)) == QUOTE
    with pytest.raises(AttestationError, match="does not carry the report data"):
        A.read_gramine_quote(bytes(64), device=str(tmp_path))
    (tmp_path / "quote").write_bytes(PLATFORM.make_quote(bytes(64)))
    assert A.dealer_measurement("sgx", device=str(tmp_path)) == MEASUREMENT
    (tmp_path / "attestation_type").write_text("none\n")
    with pytest.raises(AttestationError, match="sgx.remote_attestation"):
        A.read_gramine_quote(REPORT_DATA, device=str(tmp_path))
    with pytest.raises(ValueError):
        A.read_gramine_quote(b"short", device=str(tmp_path))


# -- launchers/sgx: the manifest template renders to the manifest the README promises ---------
def test_the_gramine_manifest_template_renders_to_a_production_dcap_manifest(tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    import tomllib
    from pathlib import Path
    from types import SimpleNamespace

    template = Path(__file__).resolve().parent.parent / "launchers" / "sgx" / "dealer.manifest.template"
    gramine = SimpleNamespace(libos="/usr/lib/gramine/libsysdb.so",
                              runtimedir=lambda: "/usr/lib/gramine/runtime")
    python = SimpleNamespace(get_sys_path=lambda entrypoint: [tmp_path])  # the stdlib: a directory
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template.read_text()).render(
        gramine=gramine, python=python, entrypoint="/usr/bin/python3.11", site_packages="/b/site-packages",
        arch_libdir="/lib/x86_64-linux-gnu", listen="0.0.0.0:7000", nparties=3, enclave_size="16G",
        max_threads=64, isv_prod_id=1, isv_svn=2)
    manifest = tomllib.loads(text)
    sgx, loader = manifest["sgx"], manifest["loader"]
    assert sgx["debug"] is False and sgx["remote_attestation"] == "dcap" and sgx["edmm_enable"] is False
    assert (sgx["enclave_size"], sgx["max_threads"], sgx["isvsvn"]) == ("16G", 64, 2)
    assert loader["argv"][1:] == ["-m", "mpc_ml", "dealer", "--attest", "sgx", "--listen", "0.0.0.0:7000",
                                  "-n", "3"]
    assert "insecure__use_cmdline_argv" not in loader  # the command line is measured, not the host's
    assert manifest["libos"]["entrypoint"] == loader["argv"][0] == "/usr/bin/python3.11"
    assert loader["entrypoint"]["uri"] == "file:/usr/lib/gramine/libsysdb.so"
    assert not any(isinstance(v, dict) and "passthrough" in v for v in loader["env"].values())
    assert {"file:/usr/bin/python3.11", "file:/b/site-packages/", f"file:{tmp_path}/"} <= set(
        sgx["trusted_files"])
    assert {m["path"] for m in manifest["fs"]["mounts"]} >= {"/usr/bin/python3.11", "/b/site-packages"}
