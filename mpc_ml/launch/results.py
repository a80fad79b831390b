"""What a launcher gets back from its parties: results, errors, and which failure came first."""
from __future__ import annotations

import pickle
import traceback
from typing import Any

from ..comm import DEALER_RANK, PeerError


class PartyError(RuntimeError):
    """A party (or the dealer) raised; carries its rank and traceback."""

    def __init__(self, rank: int, kind: str, message: str, tb: str):
        who = "the dealer" if rank == DEALER_RANK else f"party {rank}"
        super().__init__(f"{who} failed with {kind}: {message}\n--- traceback of {who} ---\n{tb}")
        self.rank, self.kind, self.message, self.traceback = rank, kind, message, tb


PEER_FAILURE_EXIT = 75
"""Exit status of a launched party that failed because a peer did (EX_TEMPFAIL), so that
the launcher can name the party that failed first."""


def describe(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


def pick_error(errors: dict[int, tuple[str, str, str]]) -> PartyError:
    """The root cause: a party's own error beats the others' 'peer went away' errors."""
    secondary = (PeerError.__name__, "CommTimeout")
    ranks = sorted(errors, key=lambda r: (errors[r][0] in secondary, r == DEALER_RANK, r))
    r = ranks[0]
    return PartyError(r, *errors[r])


def pickle_result(out: Any, rank: int) -> bytes:
    """A party's return value for the launcher that started it.

    Plain pickle copies tensors by value (multiprocessing's own pickler would pass
    shared-memory handles that die with the party's process). This only connects a
    launcher to its own child; nothing from another party is unpickled.
    """
    try:
        return pickle.dumps(out)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"the return value of party {rank} cannot be sent back: {e}") from None
