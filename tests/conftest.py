"""Fixtures the test files share; the helpers and parameter lists they use live in helpers.py."""
import pytest

from helpers import INPROC, MATRIX, NETNS_PREFIX, cleanup_namespaces, link_pair, matrix_params, sh
from mpc_ml.comm import Communicator


@pytest.fixture(params=matrix_params(MATRIX))
def matrix(request):
    """A PartyConfig (n, backend, provider): every world size x backend x provider, or the
    part of it that the test's helpers.on_matrix(...) mark names."""
    return request.param


@pytest.fixture(params=matrix_params(INPROC))
def inproc_matrix(request):
    """A PartyConfig of every world size x provider, the parties threads (inproc)."""
    return request.param


@pytest.fixture
def socket_links():
    """TcpLinks of party 0 and party 1 on a socket pair (1 MiB frame cap)."""
    left, right = link_pair()
    yield left, right
    left.close()
    right.close()


@pytest.fixture
def socket_comms(socket_links):
    """Communicators of party 0 and party 1 over socket_links (5 s receive timeout)."""
    left, right = socket_links
    yield Communicator(0, 2, {1: left}, timeout=5), Communicator(1, 2, {0: right}, timeout=5)


@pytest.fixture
def hosts():
    """Three hosts (2 parties and a dealer) on a bridge: 10.77.9.10-12, namespaces mpct0-2."""
    cleanup_namespaces()
    try:
        sh("ip", "link", "add", f"{NETNS_PREFIX}br", "type", "bridge")
        sh("ip", "link", "set", f"{NETNS_PREFIX}br", "up")
        addresses = []
        for i in range(3):
            ns, veth = f"{NETNS_PREFIX}{i}", f"{NETNS_PREFIX}v{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", f"{NETNS_PREFIX}br")
            sh("ip", "link", "set", veth, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.77.9.{10 + i}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            addresses.append(f"10.77.9.{10 + i}")
        yield addresses
    finally:
        cleanup_namespaces()
