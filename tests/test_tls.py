"""TLS on the tcp backend: certificates, private computation over TLS (2 and 3 parties,
both providers, mpc.run and `mpc-ml launch`), and refusals: a party holding another
rank's certificate, a certificate of another CA, a plain party meeting a TLS one.

Refusal tests run the parties as threads of this process (tcp_session, no process
start-up) and check that each side fails with an error naming the ranks well within
the connect timeout; certificates are made in temporary directories.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cryptography import x509

import mpc_ml as mpc
from helpers import link_pair, on_matrix, tcp_sessions
from mpc_ml import cli
from mpc_ml.comm import DEALER_RANK, PeerError
from mpc_ml.comm.tls import TLSConfig, make_certificates, rank_of_certificate

FAST = mpc.Config(connect_timeout_s=5, comm_timeout_s=5)
TIMEOUT_S = 120  # a hung subprocess fails the test instead of hanging the suite


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """One job's certificates: 3 parties and the dealer."""
    directory = tmp_path_factory.mktemp("tls") / "job"
    make_certificates(directory, parties=3, dealer=True)
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """Certificates for the same ranks from another CA."""
    directory = tmp_path_factory.mktemp("tls") / "other"
    make_certificates(directory, parties=3, dealer=True)
    return directory


# -- certificates ------------------------------------------------------------------------------
def test_certificates_name_their_rank_and_keys_are_private(certs):
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    for rank, stem, cn, uri in [(0, "party-0", "mpc_ml party 0", "urn:mpc-ml:party:0"),
                                (2, "party-2", "mpc_ml party 2", "urn:mpc-ml:party:2"),
                                (DEALER_RANK, "dealer", "mpc_ml dealer", "urn:mpc-ml:dealer")]:
        cert = x509.load_pem_x509_certificate((certs / f"{stem}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == cn
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        assert stat.S_IMODE(os.stat(certs / f"{stem}.key").st_mode) == 0o600
    assert not (certs / "ca.key").exists()  # nobody can issue more certificates for the job
    assert not (certs / "party-3.pem").exists()


def test_rank_of_certificate_needs_cn_and_san_to_agree():
    def cert(cn, *uris):
        return {"subject": ((("commonName", cn),),),
                "subjectAltName": tuple(("URI", u) for u in uris)}

    assert rank_of_certificate(cert("mpc_ml party 2", "urn:mpc-ml:party:2")) == 2
    assert rank_of_certificate(cert("mpc_ml dealer", "urn:mpc-ml:dealer")) == DEALER_RANK
    assert rank_of_certificate(cert("mpc_ml party 2", "urn:mpc-ml:party:1")) is None
    assert rank_of_certificate(cert("mpc_ml party 2")) is None
    assert rank_of_certificate(cert("mpc_ml party 2", "urn:mpc-ml:party:2",
                                    "urn:mpc-ml:party:3")) is None
    assert rank_of_certificate(cert("example.org", "urn:mpc-ml:party:x")) is None


def test_certs_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    directory = tmp_path / "c"
    assert cli.main(["certs", str(directory), "--parties", "2"]) == 0
    assert "party-1.key" in capsys.readouterr().out
    first = (directory / "ca.pem").read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        cli.main(["certs", str(directory), "--parties", "2"])
    assert cli.main(["certs", str(directory), "--parties", "2", "--dealer", "--force"]) == 0
    assert (directory / "ca.pem").read_bytes() != first and (directory / "dealer.key").exists()


def test_missing_certificates_are_a_clear_error_before_any_party_starts(tmp_path):
    make_certificates(tmp_path, parties=2)
    with pytest.raises(ValueError, match=r"lacks party-2\.pem, party-2\.key"):
        mpc.run(_tls_links, world_size=3, backend="tcp", tls_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lacks dealer\.pem.*--dealer"):
        mpc.run(_tls_links, world_size=2, backend="tcp", provider="dealer", tls_dir=tmp_path)
    with pytest.raises(ValueError, match="tls_dir needs backend 'tcp'"):
        mpc.run(_tls_links, world_size=2, backend="inproc", tls_dir=tmp_path)


# -- a TLS link on its own -----------------------------------------------------------------
def _tls_pair(directory, server_rank=0, client_rank=1):
    """Two TcpLinks over a TLS connection on a socket pair."""
    def handshake(a, b):
        with ThreadPoolExecutor(2) as pool:
            server = pool.submit(TLSConfig(directory, server_rank), a, server_side=True,
                                 peer=None)
            client = pool.submit(TLSConfig(directory, client_rank), b, server_side=False,
                                 peer=server_rank)
            return server.result(10), client.result(10), server_rank, client_rank

    return link_pair(1 << 30, wrap=handshake)


def test_tls_link_carries_large_frames_both_ways_at_once_and_closes_cleanly(certs):
    left, right = _tls_pair(certs)
    try:
        assert left.sock.version() == right.sock.version() == "TLSv1.3"
        assert (left.sock.certified_rank, right.sock.certified_rank) == (1, 0)
        # 24 MB each way at once (more than both socket buffers: only works if each
        # side's reader drains while its sender is blocked), not a multiple of a record
        g = torch.Generator().manual_seed(1)
        big = {0: torch.randint(-2 ** 62, 2 ** 62, (3_000_001,), generator=g),
               1: torch.randint(-2 ** 62, 2 ** 62, (3_000_001,), generator=g)}

        def send(link, rank):
            link.send({"step": rank})
            link.send(big[rank])
            link.send(torch.zeros(0, dtype=torch.int64))

        senders = [threading.Thread(target=send, args=(link, r))
                   for r, link in ((0, left), (1, right))]
        for t in senders:
            t.start()
        for link, peer in ((left, 1), (right, 0)):
            assert link.recv(30) == {"step": peer}
            assert torch.equal(link.recv(30), big[peer])
            assert link.recv(30).numel() == 0
        for t in senders:
            t.join(30)
        left.close()
        with pytest.raises(PeerError, match="party 0 closed the connection"):
            right.recv(5)
    finally:
        left.close()
        right.close()


# -- private computation over TLS ------------------------------------------------------------
def _tls_links() -> dict:
    """This party's links: {peer rank: (TLS version, rank its certificate proved)}."""
    from mpc_ml.session import current

    session = current()
    links = list(session.comm.links.values())
    if getattr(session.provider, "link", None) is not None:
        links.append(session.provider.link)
    return {link.peer: (link.sock.version(), link.sock.certified_rank) for link in links}


def _private_affine_relu(world_size: int):
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(6, 5, generator=g), torch.randn(5, 4, generator=g)
    b = torch.randn(4, generator=g)
    me = mpc.rank()
    px = mpc.encrypt(x if me == 0 else None, src=0, shape=x.shape)
    pw = mpc.encrypt(w if me == world_size - 1 else None, src=world_size - 1, shape=w.shape)
    y = (px @ pw + b).relu() * px[:, :4]
    return y.decrypt(), torch.relu(x @ w + b) * x[:, :4], _tls_links()


@on_matrix(n=(2, 3), backend="tcp")
def test_private_computation_over_tls(certs, matrix):
    outs = matrix.run(_private_affine_relu, args=(matrix.n,), config=FAST, tls_dir=certs)
    for rank, (got, expected, links) in enumerate(outs):
        assert torch.allclose(got, expected, atol=1e-2), (rank, got, expected)
        peers = [r for r in range(matrix.n) if r != rank]
        peers += [DEALER_RANK] if matrix.provider == "dealer" else []
        assert links == {p: ("TLSv1.3", p) for p in peers}


def test_launch_with_tls_and_a_dealer(certs, tmp_path):
    script = tmp_path / "square.py"
    script.write_text(
        "import torch\nimport mpc_ml as mpc\nfrom mpc_ml.session import current\n"
        "mpc.init()\n"
        "s = current()\n"
        "socks = [l.sock for l in s.comm.links.values()] + [s.provider.link.sock]\n"
        "x = mpc.encrypt(torch.tensor([1.5, -2.0]) if mpc.rank() == 0 else None, src=0, "
        "shape=(2,))\n"
        "y = (x * x).decrypt()\n"
        "links = sorted({(k.version(), k.certified_rank) for k in socks})\n"
        "print(f'party {mpc.rank()}: {y.tolist()} over {links}', flush=True)\n"
        "mpc.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPC_")}
    proc = subprocess.run([sys.executable, "-m", "mpc_ml", "launch", "-n", "2", "--provider",
                           "dealer", "--tls", str(certs), str(script)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "party 0: [2.25, 4.0] over [('TLSv1.3', -1), ('TLSv1.3', 1)]" in proc.stdout
    assert "party 1: [2.25, 4.0] over [('TLSv1.3', -1), ('TLSv1.3', 0)]" in proc.stdout


def test_launch_with_missing_certificates_exits_before_starting(tmp_path):
    script = tmp_path / "never.py"
    script.write_text("raise SystemExit(3)\n")
    with pytest.raises(SystemExit, match=r"lacks ca\.pem"):
        cli.main(["launch", "-n", "2", "--tls", str(tmp_path / "none"), str(script)])


# -- refusals (parties as threads) -------------------------------------------------------------
def _set_up(world_size, tls_for, dealer_tls=None, plain_dealer=False):
    """Start world_size parties (and a dealer if dealer_tls or plain_dealer) as threads;
    {rank: (error text or None, seconds)} once every one has finished."""
    return tcp_sessions([FAST] * world_size, tls=tls_for, dealer=dealer_tls is not None or plain_dealer,
                        dealer_tls=dealer_tls, timeout=30)


def _assert_quick(results):
    for rank, (_, seconds) in results.items():
        assert seconds < FAST.connect_timeout_s, (rank, seconds)


def _assert_dropped_then_timed_out(results, acceptor: int):
    """The connecting party fails at once; the accepting one drops the connection as a
    stray and gives up only at its connect timeout (the real peer might still come)."""
    for rank, (_, seconds) in results.items():
        limit = FAST.connect_timeout_s + 2 if rank == acceptor else FAST.connect_timeout_s
        assert seconds < limit, (rank, seconds)


def test_party_holding_another_partys_certificate_is_refused(certs):
    results = _set_up(2, lambda r: TLSConfig(certs, r, cert=certs / "party-0.pem",
                                             key=certs / "party-0.key"))
    assert results[0][0] == ("party 0: party 1 presented the certificate of party 0; "
                             "refusing the connection")
    assert results[1][0].startswith("party 1: refused by party 0: party 0: party 1 presented "
                                    "the certificate of party 0")
    _assert_quick(results)


def test_dealer_holding_a_partys_certificate_is_refused(certs):
    results = _set_up(2, lambda r: TLSConfig(certs, r), dealer_tls=TLSConfig(
        certs, DEALER_RANK, cert=certs / "party-0.pem", key=certs / "party-0.key"))
    refusals = [r for r in (0, 1) if results[r][0].startswith(f"party {r}: the dealer at ")
                and results[r][0].endswith("presented the certificate of party 0; refusing "
                                           "the connection")]
    assert refusals, results
    # the dealer gives up at the first refusal; a party it had not served yet fails too
    for r in set((0, 1)) - set(refusals):
        assert results[r][0].startswith(f"party {r}: TLS handshake with the dealer"), results
    assert "the dealer: refused by a peer connecting from 127.0.0.1:" in results[DEALER_RANK][0]
    assert "presented the certificate of party 0" in results[DEALER_RANK][0]
    _assert_quick(results)


def test_party_presenting_the_dealers_certificate_is_refused(certs):
    results = _set_up(2, lambda r: TLSConfig(certs, r, cert=certs / "dealer.pem",
                                             key=certs / "dealer.key") if r == 1
                      else TLSConfig(certs, r))
    assert results[0][0] == ("party 0: party 1 presented the certificate of the dealer; "
                             "refusing the connection")
    assert results[1][0].startswith("party 1: refused by party 0: party 0: party 1 presented "
                                    "the certificate of the dealer")
    _assert_quick(results)


def test_certificate_of_another_ca_is_refused(certs, other_ca):
    # party 1 trusts the job's CA but holds a certificate of another CA
    results = _set_up(2, lambda r: TLSConfig(certs, r, cert=other_ca / "party-1.pem",
                                             key=other_ca / "party-1.key") if r == 1
                      else TLSConfig(certs, r))
    # the accepting party drops the stray connection, names it, and waits for the real peer
    assert results[0][0].startswith("party 0: party 1 did not connect within 5 s (dropped: "
                                    "party 0: TLS handshake with a peer connecting from "
                                    "127.0.0.1:")
    assert f"certificate does not verify against {certs / 'ca.pem'}" in results[0][0]
    # (party 1 learns it from party 0's alert, reading the reply or sending its hello)
    assert results[1][0].startswith("party 0 ")
    assert "TLS: the peer refused this party's certificate" in results[1][0]
    _assert_dropped_then_timed_out(results, acceptor=0)

    # party 1 belongs to the other CA altogether: it refuses party 0 as well
    results = _set_up(2, lambda r: TLSConfig(other_ca if r == 1 else certs, r))
    assert results[1][0].startswith("party 1: TLS handshake with party 0 at 127.0.0.1:")
    assert f"does not verify against {other_ca / 'ca.pem'}" in results[1][0]
    assert "refused this party's certificate" in results[0][0]
    _assert_dropped_then_timed_out(results, acceptor=0)


def test_plain_party_meeting_a_tls_party_fails_cleanly(certs):
    # a plain client connecting to a TLS party gets a refusal it can read
    results = _set_up(2, lambda r: TLSConfig(certs, r) if r == 0 else None)
    assert results[0][0].startswith("party 0: party 1 did not connect within 5 s (dropped: "
                                    "party 0 requires TLS")
    assert results[1][0].startswith("party 1: refused by party 0: party 0 requires TLS")
    _assert_dropped_then_timed_out(results, acceptor=0)
    # a TLS client connecting to a plain party
    results = _set_up(2, lambda r: TLSConfig(certs, r) if r == 1 else None)
    assert "started a TLS handshake, but this party runs without TLS" in results[0][0]
    assert "did not connect within 5 s (dropped: " in results[0][0]
    assert results[1][0].startswith("party 1: TLS handshake with party 0 at 127.0.0.1:")
    _assert_dropped_then_timed_out(results, acceptor=0)


def test_plain_dealer_meeting_tls_parties_fails_cleanly(certs):
    results = _set_up(2, lambda r: TLSConfig(certs, r), plain_dealer=True)
    assert "the dealer: a peer connecting from" in results[DEALER_RANK][0]
    assert "runs without TLS" in results[DEALER_RANK][0]
    assert any(results[r][0].startswith(f"party {r}: TLS handshake with the dealer")
               for r in (0, 1))
    # the dealer gives up at the first refusal: a party that dials after that finds no
    # listener and gives up at its connect timeout
    assert max(seconds for _, seconds in results.values()) < FAST.connect_timeout_s + 2
