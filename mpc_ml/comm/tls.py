"""TLS for the tcp backend: one CA per job, one certificate per party (and the dealer).

    make_certificates(DIR, parties=3, dealer=True)  # `mpc-ml certs DIR --parties 3 --dealer`
    tls = TLSConfig(DIR, rank)                         # in each party (rank -1: the dealer)
    tcp.connect(..., wrap=tls); tcp.accept(..., wrap=tls)

Identity is the rank, not a host name: party r's certificate names "mpc_ml party r"
(subject CN) and urn:mpc-ml:party:r (URI subject alternative name); the dealer's names
"mpc_ml dealer" and urn:mpc-ml:dealer. Every connection is TLS 1.3 with certificates
required both ways and the job's CA (ca.pem) as the only trust anchor; host names are
not checked. After the handshake each side knows the rank its peer proved
(`TLSSocket.certified_rank`); tcp.connect compares it with the rank it dialled and
tcp.accept with the rank the peer's hello claims, so a party that holds another
party's certificate is refused with an error naming both ranks.

A directory from make_certificates holds every party's key, which suits one machine.
For several hosts give each host ca.pem and its own party-<r>.pem/.key only: a party
reads nothing else. The CA's private key is not kept (nobody can issue more
certificates for the job); to add a party, make a new directory for everyone.

TLSSocket runs the TLS connection over memory BIOs with one lock around the OpenSSL
object, so TcpLink's reader thread and its senders can use one connection at once
(OpenSSL does not allow two threads in one SSL object at the same time); the
socket waits themselves happen outside the lock, so a blocked send never stops the
reader from draining, and neither side of a link can deadlock on full buffers.
"""
from __future__ import annotations

import datetime
import os
import re
import secrets
import socket
import ssl
import threading
from pathlib import Path

from . import frames
from .errors import DEALER_RANK, CommError, client_index, client_rank, peer_name

CA_FILE = "ca.pem"
DEFAULT_DAYS = 365
_URI_PREFIX = "urn:mpc-ml:"
_TLS_HANDSHAKE_RECORD = 0x16  # first byte of a TLS ClientHello
RAW_CHUNK = 1 << 18  # ciphertext read from the socket at a time
SEND_CHUNK = 1 << 18  # plaintext encrypted (and then sent) at a time


class TLSError(OSError):
    """A TLS failure on an established connection (an alert, a bad record).

    An OSError, so TcpLink reports it like any other connection failure, naming the peer.
    """


# -- names ---------------------------------------------------------------------------------
def _stem(rank: int) -> str:
    if rank == DEALER_RANK:
        return "dealer"
    index = client_index(rank)
    return f"client-{index}" if index is not None else f"party-{rank}"


def cert_path(directory: str | os.PathLike, rank: int) -> Path:
    """party-<rank>.pem, dealer.pem for the dealer, client-<k>.pem for client_rank(k)."""
    return Path(directory) / f"{_stem(rank)}.pem"


def key_path(directory: str | os.PathLike, rank: int) -> Path:
    """party-<rank>.key, dealer.key for the dealer, client-<k>.key for client_rank(k)."""
    return Path(directory) / f"{_stem(rank)}.key"


def common_name(rank: int) -> str:
    """The subject CN of a rank's certificate: 'mpc_ml party 2', 'mpc_ml dealer',
    'mpc_ml client 0'."""
    return f"mpc_ml {_stem(rank).replace('-', ' ')}"


def identity_uri(rank: int) -> str:
    """The URI SAN of a rank's certificate: 'urn:mpc-ml:party:2', 'urn:mpc-ml:dealer',
    'urn:mpc-ml:client:0'."""
    return f"{_URI_PREFIX}{_stem(rank).replace('-', ':')}"


def _rank_of_name(text: str, pattern: str) -> int | None:
    m = re.fullmatch(pattern, text)
    if m is None:
        return None
    if m.group(1) == "dealer":
        return DEALER_RANK
    return client_rank(int(m.group(4))) if m.group(4) is not None else int(m.group(2))


def rank_of_certificate(cert: dict) -> int | None:
    """The rank a verified peer certificate names (ssl's getpeercert() dict), or None if
    it names none or names inconsistent ranks in its CN and SAN."""
    uris = [v for kind, v in cert.get("subjectAltName", ()) if kind == "URI"
            and v.startswith(_URI_PREFIX)]
    cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    by_uri = {_rank_of_name(u, r"urn:mpc-ml:(dealer|party:(\d{1,9})|(client):(\d{1,9}))")
              for u in uris}
    by_cn = {_rank_of_name(c, r"mpc_ml (dealer|party (\d{1,9})|(client) (\d{1,9}))")
             for c in cns}
    if len(by_uri) != 1 or by_uri != by_cn or None in by_uri:
        return None
    return by_uri.pop()


def peer_rank_of(sock: object) -> int | None:
    """The rank the peer of a TLS connection proved with its certificate (None if plain)."""
    return getattr(sock, "certified_rank", None)


# -- making certificates ---------------------------------------------------------------------
def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # also when the file existed with other permissions
        os.write(fd, data)
    finally:
        os.close(fd)


def make_certificates(directory: str | os.PathLike, parties: int, dealer: bool = False,
                      days: int = DEFAULT_DAYS, force: bool = False, clients: int = 0) -> list[Path]:
    """A fresh CA and one EC P-256 key pair and certificate per party (and the dealer, and
    each inference client).

    Writes ca.pem, party-<r>.pem and party-<r>.key for r in 0..parties-1,
    dealer.pem/.key with dealer=True, client-<k>.pem/.key for k < clients; keys are mode
    0600. The CA's key is discarded.
    Refuses to overwrite an existing ca.pem unless force. Returns the files written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not isinstance(parties, int) or parties < 2:
        raise ValueError(f"parties must be an integer >= 2, got {parties!r}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / CA_FILE).exists() and not force:
        raise FileExistsError(f"{directory / CA_FILE} exists; certificates of another CA would "
                              "not work with it (pass force=True / --force to replace them all)")
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpc_ml"),
                         x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"mpc_ml job CA {secrets.token_hex(4)}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA256()))
    written = [directory / CA_FILE]
    _write(written[0], ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    ranks = (list(range(parties)) + ([DEALER_RANK] if dealer else [])
             + [client_rank(k) for k in range(clients)])
    for rank in ranks:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpc_ml"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name(rank))]))
                .issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity_uri(rank))]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cpath, kpath = cert_path(directory, rank), key_path(directory, rank)
        _write(kpath, key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
        _write(cpath, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written += [cpath, kpath]
    return written


def check_directory(directory: str | os.PathLike, world_size: int, dealer: bool = False) -> None:
    """A clear error now if the directory lacks a file some party (or the dealer) will read."""
    directory = Path(directory)
    ranks = list(range(world_size)) + ([DEALER_RANK] if dealer else [])
    missing = [p.name for p in [directory / CA_FILE]
               + [f(directory, r) for r in ranks for f in (cert_path, key_path)] if not p.exists()]
    if missing:
        hint = f"mpc-ml certs {directory} --parties {world_size}" + (" --dealer" if dealer else "")
        raise ValueError(f"TLS directory {directory} lacks {', '.join(missing)} "
                         f"(make them with `{hint}`)")


# -- connections -------------------------------------------------------------------------------
def _describe(e: BaseException, ca: Path) -> str:
    """A readable cause for an SSL error."""
    reason = getattr(e, "reason", None) or ""
    if isinstance(e, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        why = getattr(e, "verify_message", None) or str(e)
        return (f"the peer's certificate does not verify against {ca} ({why}): it was not "
                "issued by this job's CA, or it expired")
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                  "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                  "SSLV3_ALERT_CERTIFICATE_REVOKED"):
        return (f"the peer refused this party's certificate (TLS alert {reason.lower()}): the "
                "two certificates were not issued by the same CA, or one expired")
    if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        return "no certificate was presented (both sides must have one)"
    if reason in ("WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                  "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return f"the peer does not speak TLS 1.3 ({reason.lower()}); does it run without TLS?"
    if isinstance(e, (ssl.SSLEOFError, ConnectionError)):
        return (f"the connection closed during the handshake ({e}); the peer refused it "
                "(does it run without TLS, or with another job's certificates?)")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "the handshake did not finish in time"
    return str(e) or type(e).__name__


class TLSSocket:
    """A TLS connection over a connected socket, with the socket methods TcpLink uses
    (recv_into, sendall, settimeout, shutdown, close), safe for one reader thread and
    any number of senders at once."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, server_side: bool,
                 ca: Path = Path(CA_FILE)):
        self.raw, self._ca = raw, ca
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side)
        self._lock = threading.Lock()  # the OpenSSL object: one thread at a time
        self._send_lock = threading.Lock()  # ciphertext leaves in the order it was made
        self._buf = bytearray(RAW_CHUNK)
        self._view = memoryview(self._buf)
        self.certified_rank: int | None = None
        self._failure: str | None = None  # why the reader found the connection broken

    # -- set-up (one thread, before TcpLink starts its reader) --------------------------------
    def handshake(self) -> None:
        """Run the handshake on the raw socket's timeout; ssl/OS errors propagate."""
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_now()
                n = self.raw.recv_into(self._buf)
                if n:
                    self._in.write(self._view[:n])
                else:
                    self._in.write_eof()
            except ssl.SSLError:
                self._flush_now(quiet=True)  # the alert tells the peer why
                raise
        self._flush_now()

    def _flush_now(self, quiet: bool = False) -> None:
        data = self._out.read()
        if data:
            try:
                self.raw.sendall(data)
            except OSError:
                if not quiet:
                    raise

    def getpeercert(self) -> dict:
        return self._obj.getpeercert()

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    # -- the socket interface TcpLink uses -----------------------------------------------------
    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Decrypt up to nbytes into buffer; 0 at the end of the stream."""
        view = memoryview(buffer)
        want = nbytes or len(view)
        while True:
            with self._lock:
                got, closed = 0, False
                try:
                    while got < want:  # whatever is decryptable now, without waiting
                        n = self._obj.read(want - got, view[got:])
                        if not n:  # the peer's close_notify
                            closed = True
                            break
                        got += n
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    closed = True  # a closed stream reads as EOF, as on a plain socket
                except ssl.SSLError as e:
                    self._failure = f"TLS: {_describe(e, self._ca)}"
                    if not got:
                        raise TLSError(self._failure) from None
                if got or closed or self._in.eof:
                    return got
            n = self.raw.recv_into(self._buf)  # outside the lock: senders go on meanwhile
            with self._lock:
                if n:
                    self._in.write(self._view[:n])
                else:
                    self._in.write_eof()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        with self._send_lock:
            for start in range(0, len(view), SEND_CHUNK):
                with self._lock:
                    try:
                        self._obj.write(view[start:start + SEND_CHUNK])
                    except ssl.SSLError as e:  # the reader's finding says why, if it has one
                        raise TLSError(self._failure or f"TLS: {_describe(e, self._ca)}") \
                            from None
                    ciphertext = self._out.read()
                self.raw.sendall(ciphertext)  # outside the lock: the reader goes on meanwhile

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.raw.gettimeout()

    def fileno(self) -> int:
        return self.raw.fileno()

    def getpeername(self) -> tuple:
        return self.raw.getpeername()

    def shutdown(self, how: int) -> None:
        """Send close_notify if no send is in progress (never waits), then shut the socket."""
        if self._send_lock.acquire(blocking=False):
            try:
                with self._lock:
                    try:
                        self._obj.unwrap()
                    except (ssl.SSLError, ValueError, OSError):
                        pass  # sent; the peer's close_notify is not awaited
                    data = self._out.read()
                if data:
                    try:
                        self.raw.send(data, getattr(socket, "MSG_DONTWAIT", 0))
                    except OSError:
                        pass
            finally:
                self._send_lock.release()
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()


def _drain_and_close(sock: socket.socket) -> None:
    """Close after reading what the peer sent, so the close is a FIN, not a reset that
    could destroy an error message the peer has not read yet."""
    try:
        while sock.recv(1 << 16, getattr(socket, "MSG_DONTWAIT", 0)):
            pass
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class TLSConfig:
    """One party's (or the dealer's) TLS settings from a certificate directory.

    Pass it as `wrap=` to tcp.connect / tcp.accept / tcp.connect_mesh: it is called as
    wrap(sock, server_side=..., peer=...) and returns a TLSSocket whose certified_rank
    is the rank the peer's certificate names.
    """

    def __init__(self, directory: str | os.PathLike, rank: int, cert: str | os.PathLike | None = None,
                 key: str | os.PathLike | None = None, ca: str | os.PathLike | None = None):
        self.directory, self.rank = Path(directory), rank
        self.cert = Path(cert) if cert else cert_path(directory, rank)
        self.key = Path(key) if key else key_path(directory, rank)
        self.ca = Path(ca) if ca else self.directory / CA_FILE
        for what, path in (("the CA certificate", self.ca),
                           (f"the certificate of {peer_name(rank)}", self.cert),
                           (f"the key of {peer_name(rank)}", self.key)):
            if not path.is_file():
                raise CommError(f"{peer_name(rank)}: no {what} at {path} (make the job's "
                                "certificates with `mpc-ml certs DIR --parties N [--dealer]`)")
        try:
            self.server_context = self._context(server_side=True)
            self.client_context = self._context(server_side=False)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise CommError(f"{peer_name(rank)}: cannot load its TLS files ({self.cert}, "
                            f"{self.key}, {self.ca}): {e}") from None

    def _context(self, server_side: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # identity is the rank in the certificate, checked after
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(cafile=str(self.ca))  # the job's CA: the only trust anchor
        ctx.load_cert_chain(str(self.cert), str(self.key))
        if server_side:
            ctx.num_tickets = 0  # no session resumption: every connection authenticates afresh
        return ctx

    def __call__(self, sock: socket.socket, server_side: bool, peer: int | None = None) -> "TLSSocket":
        """Handshake on sock (within its timeout); the TLSSocket, or CommError naming why."""
        me = peer_name(self.rank)
        try:
            host, port = sock.getpeername()[:2]
            where = f"{host}:{port}"
        except (OSError, ValueError, TypeError):  # not an internet socket (socketpair in tests)
            where = "a local socket"
        who = (f"a peer connecting from {where}" if peer is None
               else f"{peer_name(peer)} at {where}")
        if server_side:
            self._refuse_plain(sock, me, who)
        tls = TLSSocket(sock, self.server_context if server_side else self.client_context,
                        server_side, self.ca)
        try:
            tls.handshake()
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise CommError(f"{me}: TLS handshake with {who} failed: {_describe(e, self.ca)}") \
                from None
        rank = rank_of_certificate(tls.getpeercert() or {})
        if rank is None:
            tls.close()
            raise CommError(f"{me}: {who} presented a certificate of this job's CA that names "
                            "no mpc_ml party, dealer or client; refusing the connection")
        tls.certified_rank = rank
        return tls

    wrap = __call__

    def _refuse_plain(self, sock: socket.socket, me: str, who: str) -> None:
        """A peer that sends a plaintext mpc_ml hello gets a plaintext refusal it can read."""
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, TimeoutError):
            sock.close()
            raise CommError(f"{me}: {who} sent nothing in time (no TLS handshake)") from None
        except OSError:
            return  # the handshake reports it
        if first and first[0] != _TLS_HANDSHAKE_RECORD:
            msg = (f"{me} requires TLS (mutually authenticated, with the job's certificates); "
                   f"{who} connected without TLS")
            try:
                sock.sendall(frames.control_frame({"error": msg}))
            except OSError:
                pass
            _drain_and_close(sock)
            raise CommError(f"{msg}; refusing the connection (start every party with the same "
                            "--tls directory / MPC_TLS_DIR)")
