"""Fixtures the test files share; the helpers and parameter lists they use live in helpers.py."""
import pytest

from helpers import INPROC, MATRIX, link_pair, matrix_params
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
