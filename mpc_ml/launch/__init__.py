"""Starting parties: mpc.run, mpc.init, process and MPI runners, deployment files.

Builds a Session per party from comm/ links and a provider, runs the user's function
and reports the first real failure (PartyError). Imports comm/, providers/ and the
session; knows nothing of shares or tensors.
"""
from .results import PEER_FAILURE_EXIT, PartyError
from .run import BACKENDS, init, local_session, run, run_tcp_dealer, shutdown, tcp_session

__all__ = ["BACKENDS", "PEER_FAILURE_EXIT", "PartyError", "init", "local_session", "run",
           "run_tcp_dealer", "shutdown", "tcp_session"]
