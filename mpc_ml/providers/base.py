"""Correlated randomness: what a correlation is, and how its shares are made.

A correlation has *free* components, uniformly random (Beaver's a, b; a truncation
mask r), and *derived* components, functions of the free ones (c = a (x) b; the
truncated mask and its top bit). Every party i holds a PRG stream shared with the
generator (the dealer, or party 0 under the trusted-first-party provider). For each
correlation, in program order, party i draws its shares of the free components from
its stream, then its shares of the derived ones, except the *correction party*, who
instead gets derived - sum(other parties' derived shares) from the generator. So the
generator sends data to one party only; all other shares cost nothing to deliver.

The requests a computation makes depend on shapes only, so a traced list of them can be
announced ahead (`Provider.prefetch`): a dealer then makes the correlations of the
next repeats of that list without waiting for each request (protocols/offline.toml).
"""
from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from ..core import dcf, ring
from ..core.prg import PRG


class CorrelationKind:
    """How to make one kind of correlation from its parameters.

    `free_xor` / `derived_xor` say, per component, whether it is XOR-shared (binary)
    rather than additively shared (arithmetic); True says it of every component. `holders`
    names, per free component, a party that holds it whole (a mask of an input only that
    party knows). A kind with `public` components (key
    material that every party needs whole, such as the correction words of an FSS key)
    has them sent by the generator to every party; its `derive` then also gets each
    party's own free draws and the streams' PRG algorithm (derive(params, total_free,
    per_party, prg)) and returns the derived components followed by the public ones.
    """

    def __init__(self, free: Callable[[dict], list], derived: Callable[[dict], list],
                 derive: Callable[..., list], free_xor: tuple | bool = (),
                 derived_xor: tuple | bool = (), public: Callable[[dict], list] | None = None,
                 holders: tuple = (), fixed: tuple = ()):
        self.free_shapes, self.derived_shapes, self.derive = free, derived, derive
        self.fixed = fixed
        """Free components drawn from a stream keyed by the request's `mask` (the same draw
        every time: a fixed mask, primitives/beaver.fixed_mask_product)."""
        self.free_xor, self.derived_xor = free_xor, derived_xor
        self.holders = holders
        """Per free component, the rank that holds it whole (the others hold zeros and draw
        nothing for it), or None: shared by everyone."""
        self.public_shapes = public or (lambda p: [])
        self.has_public = public is not None


PREFETCH_WINDOW = 2
"""How many prefetched repeats a dealer keeps in flight (made, not yet all collected)."""


def _is_xor(flags: tuple | bool, i: int) -> bool:
    return flags is True or (not isinstance(flags, bool) and i < len(flags) and flags[i])


def _accumulate(acc: list | None, shares: list, xor: tuple) -> list:
    """acc + shares, component-wise (XOR for binary components)."""
    if acc is None:
        return list(shares)
    return [a ^ s if _is_xor(xor, i) else a + s for i, (a, s) in enumerate(zip(acc, shares))]


def _remove(full: list, others: list, xor: tuple) -> list:
    """full - others, component-wise (XOR for binary components)."""
    return [f ^ o if _is_xor(xor, i) else f - o for i, (f, o) in enumerate(zip(full, others))]


LOW_63 = (1 << 63) - 1


def _triple_derive(p: dict, free: list) -> list:
    return [ring.bilinear(p["op"], free[0], free[1], **p["kwargs"])]


def _fixed_mask_params(p: dict) -> dict:
    mask = p["mask"]
    if not isinstance(mask, int) or isinstance(mask, bool) or mask < 0:
        raise ValueError(f"a fixed_triple's mask is an integer >= 0, got {mask!r}")
    return p


def _trunc_derive(p: dict, free: list) -> list:
    (r,) = free
    low = r & LOW_63
    return [low >> p["bits"], (r >> 63) & 1]


def components(mask: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """The dealer-shared components of an operand's mask: [a] settled, [u, v] pending."""
    if bits == 0:
        return [mask]
    return [(mask & LOW_63) >> bits, ((mask >> 63) & 1) << (63 - bits)]


def cross_pairs(n_x: int, n_y: int, square: bool) -> list[tuple[int, int]]:
    """Which component products the dealer makes: all (i, j), or i <= j for a square."""
    return [(i, j) for i in range(n_x) for j in range(n_y) if not square or i <= j]


def _lazy_params(params: dict) -> dict:
    """A lazy_triple request's parameters, checked (ValueError names what is wrong)."""
    for key in ("x_bits", "y_bits"):
        b = params[key]
        if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b <= 62:
            raise ValueError(f"a lazy_triple's {key} is an integer in 0..62, got {b!r}")
    if not isinstance(params["square"], bool):
        raise ValueError("a lazy_triple's square is a boolean")
    if params["square"] and (params["x_bits"] != params["y_bits"]
                             or list(params["x_shape"]) != list(params["y_shape"])):
        raise ValueError("a square lazy_triple has one operand: equal bits and shapes")
    return params


def _lazy_derive(params: dict, free: list[torch.Tensor]) -> list[torch.Tensor]:
    """The lazy_triple's derived values (primitives/lazy_product.py says what they are)."""
    xb, yb, square = params["x_bits"], params["y_bits"], params["square"]
    cx = components(free[0], xb)
    cy = cx if square else components(free[1], yb)
    out = cx if xb else []
    if yb and not square:
        out = out + cy
    return out + [cx[i] * cy[j] for i, j in cross_pairs(len(cx), len(cy), square)]


def _lazy_derived_shapes(params: dict) -> list[tuple]:
    _lazy_params(params)
    xs, ys = tuple(params["x_shape"]), tuple(params["y_shape"])
    xb, yb, square = params["x_bits"], params["y_bits"], params["square"]
    zs = xs if square else tuple(torch.broadcast_shapes(xs, ys))
    n_x, n_y = (2 if xb else 1), (2 if yb else 1)
    shapes = [xs] * (2 if xb else 0) + ([ys] * 2 if yb and not square else [])
    return shapes + [zs] * len(cross_pairs(n_x, n_x if square else n_y, square))


def _lazy_free_shapes(params: dict) -> list[tuple]:
    xs, ys = tuple(params["x_shape"]), tuple(params["y_shape"])
    return [xs] if params["square"] else [xs, ys]


DCF_MAX_ELEMENTS = 1 << 16
"""Elements per DCF key request (about 1.5 KB of key each): bounds the dealer's memory."""


def _dcf_numel(p: dict) -> int:
    n = p["numel"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= DCF_MAX_ELEMENTS:
        raise ValueError(f"a dcf_ltz request covers 1..{DCF_MAX_ELEMENTS} elements, got {n!r}")
    return n


def _dcf_derive(p: dict, free: list, per_party: list, prg: str) -> list:
    """msb(r) (additive), then the DCF's public part for alpha = r mod 2^63 and
    beta = 1 - 2 msb(r) (primitives/fss.py says why), its tree's PRG the streams' own."""
    if len(per_party) != 2:
        raise ValueError("dcf_ltz keys are for 2 parties")
    r = free[0]
    msb = (r >> 63) & 1
    part = dcf.gen(r & LOW_63, 1 - 2 * msb, per_party[0][1], per_party[1][1], prg)
    return [msb, *part.tensors()]


MAX_MONOMIAL_INPUTS = 16
MAX_MONOMIAL_DEGREE = 5
MAX_MONOMIALS = 8


def monomial_entry(entry: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(input, row shift) of a monomial's entry: i (input i) or [i, s] (input i with its
    rows shifted by s: row r reads row r - s, and rows outside read as zero)."""
    return (entry, 0) if isinstance(entry, int) else (entry[0], entry[1])


def monomial_subsets(monomials: list) -> list[tuple[tuple[int, int], ...]]:
    """The subsets of two or more entries of any of the monomials, as sorted tuples of
    (input, shift), in (size, entries) order: the mask products a `band` holds
    (primitives/binary.and_monomials)."""
    out = set()
    for mono in monomials:
        entries = sorted(monomial_entry(e) for e in mono)
        for k in range(2, len(entries) + 1):
            out.update(itertools.combinations(entries, k))
    return sorted(out, key=lambda s: (len(s), s))


def shift_rows(t: torch.Tensor, shift: int) -> torch.Tensor:
    """Rows of t moved by shift (row r of the result is row r - shift of t), zero-filled."""
    if shift == 0:
        return t
    out = torch.zeros_like(t)
    if abs(shift) < t.shape[0]:
        if shift > 0:
            out[shift:] = t[:-shift]
        else:
            out[:shift] = t[-shift:]
    return out


def _is_index(v, bound: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound


def _band_params(p: dict) -> dict:
    """A band request's parameters, checked (ValueError names what is wrong)."""
    inputs, monomials, shape = p["inputs"], p["monomials"], p["shape"]
    if not isinstance(inputs, int) or isinstance(inputs, bool) or not 1 <= inputs <= MAX_MONOMIAL_INPUTS:
        raise ValueError(f"a band's inputs is an integer in 1..{MAX_MONOMIAL_INPUTS}, got {inputs!r}")
    if not isinstance(shape, list) or len(shape) not in (1, 2) \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"a band's shape is [words] or [rows, words], got {shape!r}")
    if not isinstance(monomials, list) or not 1 <= len(monomials) <= MAX_MONOMIALS:
        raise ValueError(f"a band has 1..{MAX_MONOMIALS} monomials, got {monomials!r}")
    rows = shape[0] if len(shape) == 2 else 1
    used = set()
    for mono in monomials:
        def valid(e) -> bool:
            if _is_index(e, inputs):
                return True
            return (isinstance(e, list) and len(e) == 2 and _is_index(e[0], inputs)
                    and isinstance(e[1], int) and not isinstance(e[1], bool)
                    and e[1] != 0 and abs(e[1]) < rows)
        ok = isinstance(mono, list) and 1 <= len(mono) <= MAX_MONOMIAL_DEGREE and all(map(valid, mono))
        entries = [monomial_entry(e) for e in mono] if ok else []
        if not ok or entries != sorted(set(entries)):
            raise ValueError(f"a band's monomial is a sorted list of 1..{MAX_MONOMIAL_DEGREE} "
                             f"distinct entries, each an input index below {inputs} or [index, "
                             f"row shift] (0 < |shift| < {rows} rows), got {mono!r}")
        used.update(i for i, _ in entries)
    if len(used) != inputs:
        unused = sorted(set(range(inputs)) - used)
        raise ValueError(f"every input of a band is in some monomial; unused: {unused}")
    return p


def _band_derive(p: dict, free: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for subset in monomial_subsets(p["monomials"]):
        acc = None
        for i, shift in subset:
            term = shift_rows(free[i], shift)
            acc = term if acc is None else acc & term
        out.append(acc)
    return out


def _bit_product_shapes(p: dict) -> tuple[tuple, list[tuple]]:
    """(the bit's shape, the values' shapes), checked: each value's shape is the bit's,
    possibly with fewer rows (it multiplies the leading rows of the bit) and with trailing
    dims over which the bit is broadcast."""
    bit = tuple(p["shape"])
    values = [tuple(v) for v in p["value_shapes"]]

    def fits(v: tuple) -> bool:
        if not bit:
            return True
        return len(v) >= len(bit) and v[0] <= bit[0] and v[1:len(bit)] == bit[1:]
    if not 1 <= len(values) <= MAX_MONOMIALS or not all(fits(v) for v in values):
        raise ValueError(f"a bit_product multiplies 1..{MAX_MONOMIALS} values shaped like the "
                         f"bit {list(bit)} (or its leading rows), got {p['value_shapes']!r}")
    return bit, values


def bit_rows(r: torch.Tensor, value_shape: tuple) -> torch.Tensor:
    """The part of a bit tensor that multiplies a value of this shape (bit_product), shaped
    to broadcast against it."""
    if r.dim():
        r = r[:value_shape[0]]
    return r.reshape(r.shape + (1,) * (len(value_shape) - r.dim()))


def _bit_product_derive(p: dict, free: list[torch.Tensor]) -> list[torch.Tensor]:
    """[r] for the low bit r of the XOR-shared word, then [r a_k] for each value's mask."""
    _bit_product_shapes(p)
    r = free[0] & 1
    return [r] + [bit_rows(r, tuple(a.shape)) * a for a in free[1:]]


KINDS: dict[str, CorrelationKind] = {
    # Beaver triple for a bilinear op: a, b uniform; c = op(a, b).
    "triple": CorrelationKind(
        free=lambda p: [tuple(p["a_shape"]), tuple(p["b_shape"])],
        derived=lambda p: [ring.bilinear_output_shape(p["op"], p["a_shape"], p["b_shape"],
                                                      p["kwargs"])],
        derive=_triple_derive),
    # Beaver triple with a fixed mask b (the same for every request with this `mask`, so
    # that y - b is opened once: primitives/beaver.fixed_mask_product); a fresh.
    "fixed_triple": CorrelationKind(
        free=lambda p: [tuple(p["a_shape"]), tuple(_fixed_mask_params(p)["b_shape"])],
        derived=lambda p: [ring.bilinear_output_shape(p["op"], p["a_shape"], p["b_shape"],
                                                      p["kwargs"])],
        derive=_triple_derive, fixed=(1,)),
    # Truncation mask: r uniform; (r mod 2^63) >> bits; msb(r).
    "trunc": CorrelationKind(
        free=lambda p: [tuple(p["shape"])],
        derived=lambda p: [tuple(p["shape"]), tuple(p["shape"])],
        derive=_trunc_derive),
    # Lazy-truncation triple (primitives/lazy_product.py): the masks of an elementwise
    # product's operands, pending operands' truncation components, their products.
    "lazy_triple": CorrelationKind(free=_lazy_free_shapes, derived=_lazy_derived_shapes,
                                   derive=_lazy_derive),
    # FSS comparison key (primitives/fss.py): mask r (additive) and each party's DCF seed;
    # [msb(r)]; public: the DCF correction words for alpha = r mod 2^63.
    "dcf_ltz": CorrelationKind(
        free=lambda p: [(_dcf_numel(p),), (_dcf_numel(p), 2)],
        derived=lambda p: [(_dcf_numel(p),)],
        derive=_dcf_derive, free_xor=(False, True),
        public=lambda p: [(dcf.BITS, _dcf_numel(p), 2), (dcf.BITS, _dcf_numel(p))]
        + [(_dcf_numel(p),)] * 3),
    # Binary Beaver triple: a, b uniform words, XOR-shared; c = a AND b, XOR-shared.
    "btriple": CorrelationKind(
        free=lambda p: [tuple(p["shape"]), tuple(p["shape"])],
        derived=lambda p: [tuple(p["shape"])],
        derive=lambda p, free: [free[0] & free[1]],
        free_xor=(True, True), derived_xor=(True,)),
    # AND of a word party 0 holds and one party 1 holds (primitives/binary.and_held): a, a
    # mask held by party 0, b held by party 1; c = a AND b, XOR-shared.
    "held_btriple": CorrelationKind(
        free=lambda p: [tuple(p["shape"]), tuple(p["shape"])],
        derived=lambda p: [tuple(p["shape"])],
        derive=lambda p, free: [free[0] & free[1]],
        free_xor=(True, True), derived_xor=(True,), holders=(0, 1)),
    # Multi-input AND (primitives/binary.and_monomials): one uniform XOR-shared mask per
    # input; the AND of the (row-shifted) masks of every subset (two or more) of a monomial.
    "band": CorrelationKind(
        free=lambda p: [tuple(_band_params(p)["shape"])] * p["inputs"],
        derived=lambda p: [tuple(_band_params(p)["shape"])] * len(monomial_subsets(p["monomials"])),
        derive=_band_derive, free_xor=True, derived_xor=True),
    # Product by an XOR-shared bit (primitives/binary.bit_products): a uniform word r
    # (XOR-shared; its low bit is used) and an additive mask a_k per value; [r], [r a_k].
    "bit_product": CorrelationKind(
        free=lambda p: [_bit_product_shapes(p)[0]] + _bit_product_shapes(p)[1],
        derived=lambda p: [_bit_product_shapes(p)[0]] + _bit_product_shapes(p)[1],
        derive=_bit_product_derive, free_xor=(True,)),
    # Doubly-authenticated bits (daBits), one word at a time: r uniform, XOR-shared;
    # the bits of r at `positions`, each additively shared (trailing dim).
    "dabits": CorrelationKind(
        free=lambda p: [tuple(p["shape"])],
        derived=lambda p: [(*p["shape"], len(p["positions"]))],
        derive=lambda p, free: [ring.bits_at(free[0], p["positions"])],
        free_xor=(True,)),
}


MAX_REQUEST_ELEMENTS = 1 << 28
"""The most int64 elements one request's components may hold together (2 GiB): a hostile
party's request cannot make the dealer allocate without bound."""


def check_size(request: dict) -> None:
    """ValueError unless the request's components hold at most MAX_REQUEST_ELEMENTS."""
    kind, params = kind_of(request), request["params"]
    total = 0
    for shape in (*kind.free_shapes(params), *kind.derived_shapes(params), *kind.public_shapes(params)):
        dims = tuple(shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in dims):
            raise ValueError(f"a component's shape must be integers >= 0, got {list(dims)}")
        count = 1
        for d in dims:
            count *= d
        total += count
        if total > MAX_REQUEST_ELEMENTS:
            raise ValueError(f"the request holds more than {MAX_REQUEST_ELEMENTS} elements")


def kind_of(request: dict) -> CorrelationKind:
    try:
        return KINDS[request["kind"]]
    except KeyError:
        raise ValueError(f"unknown correlation kind {request.get('kind')!r}") from None


def draw_shares(stream: PRG, request: dict, with_derived: bool, rank: int,
                device: torch.device | str | None = None) -> tuple[list, list]:
    """Party `rank`'s shares drawn from its stream, on device: (free, derived or [])."""
    kind = kind_of(request)
    holders = kind.holders
    free = [stream.derive(f"fixed-mask/{request['params']['mask']}").random_ring(s, device)
            if i in kind.fixed else
            stream.random_ring(s, device) if i >= len(holders) or holders[i] in (None, rank)
            else torch.zeros(tuple(s), dtype=torch.int64, device=device)
            for i, s in enumerate(kind.free_shapes(request["params"]))]
    derived = ([stream.random_ring(s, device) for s in kind.derived_shapes(request["params"])]
               if with_derived else [])
    return free, derived


class CorrelationGenerator:
    """Makes correlations for all parties from their streams (dealer, or TFP's party 0)."""

    def __init__(self, streams: list[PRG], correction_party: int,
                 device: torch.device | str | None = None):
        self.streams, self.correction_party = streams, correction_party
        self.device = device
        """Where the draws and the correlations' products are made (None: the host)."""

    def generate(self, request: dict) -> tuple[list, list]:
        """(the correction party's free shares, its derived shares), and for a kind with
        public components, those as a third element (what every party is sent).
        ValueError for a request past MAX_REQUEST_ELEMENTS."""
        kind = kind_of(request)
        check_size(request)
        total_free = others_derived = mine_free = None
        per_party = []
        for i, stream in enumerate(self.streams):
            is_corr = i == self.correction_party
            free, derived = draw_shares(stream, request, with_derived=not is_corr, rank=i,
                                        device=self.device)
            per_party.append(free)
            if is_corr:
                mine_free = free
            total_free = _accumulate(total_free, free, kind.free_xor)
            if derived:
                others_derived = _accumulate(others_derived, derived, kind.derived_xor)
        if kind.has_public:
            out = kind.derive(request["params"], total_free, per_party,
                              self.streams[0].algorithm)
            n_derived = len(kind.derived_shapes(request["params"]))
            full, public = out[:n_derived], out[n_derived:]
        else:
            full, public = kind.derive(request["params"], total_free), None
        corrections = full if others_derived is None else _remove(full, others_derived,
                                                                  kind.derived_xor)
        return (mine_free, corrections) if public is None else (mine_free, corrections, public)


class Correlation:
    """This party's shares of one correlation; derived shares may arrive later."""

    def __init__(self, free: list, derived: list | None = None,
                 fetch: Callable[["Correlation"], None] | None = None, n_derived: int = 0,
                 public: list | None = None, public_shapes: list | None = None,
                 derived_shapes: list | None = None):
        self.free = free
        self._derived = derived
        self._fetch = fetch
        self.n_derived = n_derived
        self.derived_shapes = derived_shapes
        """The shapes of the derived components still to come, where they are checked."""
        self._public = public
        self.public_shapes = public_shapes or []
        """The shapes of the public components still to come (checked on arrival)."""
        self.n_public = len(self.public_shapes)

    def set_derived(self, derived: list) -> None:
        self._derived = derived

    def set_public(self, public: list) -> None:
        self._public = public

    def derived(self) -> list:
        """The derived shares (waits for the generator where they come from it)."""
        if self._derived is None:
            self._fetch(self)
        return self._derived

    def public(self) -> list:
        """The public components every party is sent (for kinds that have them)."""
        if self._public is None:
            self._fetch(self)
        return self._public


class Provider(ABC):
    """Source of correlations for one party.

    A subclass makes correlations (`_correlation`) and says how it is built for a party
    (`create`); `request` is the one entry point, where observers (the correlation
    trace) see every request in program order.
    """

    name: str
    needs_dealer: bool = False
    """Whether the party needs a link to a dealer process."""

    def __init__(self) -> None:
        self.observers: list[Callable[[dict], None]] = []
        self.device = torch.device("cpu")
        """Where this party's correlations are made and delivered (Config.device): its
        seeded draws come out there, and what a dealer sends is moved there on arrival."""

    @classmethod
    @abstractmethod
    def create(cls, rank: int, world_size: int, own: PRG, pairwise: dict[int, PRG],
               dealer_link: Any, timeout: float,
               measurements: list[str] | None = None,
               allowed_tcb: tuple[str, ...] = ("UpToDate",)) -> "Provider":
        """This party's provider, from its PRGs and (if needs_dealer) its dealer link, the
        dealer measurements it pins and the TCB statuses it accepts."""

    def prefetch(self, requests: list[dict], repeats: int, window: int = PREFETCH_WINDOW) -> None:
        """Announce that the next `repeats` runs of `requests` (in order) follow, so their
        correlations can be made ahead (a no-op here: this provider never waits).

        Every party must call it at the same point of the program (SPMD), with the same
        list. See DealerProvider.prefetch for what the dealer makes of it."""
        check_prefetch(requests, repeats, window)

    def request(self, kind: str, **params) -> Correlation:
        """This party's shares of a new correlation (same call order on every party)."""
        request = make_request(kind, **params)
        for observe in self.observers:
            observe(request)
        return self._correlation(request)

    @abstractmethod
    def _correlation(self, request: dict) -> Correlation:
        """Make (or fetch) this party's shares of one checked request."""

    def stats(self) -> dict:
        """Traffic to and from a dealer (empty where there is none)."""
        return {}

    def reset_stats(self) -> None:
        pass

    def close(self) -> None:
        pass


class PrefetchDivergence(RuntimeError):
    """A request differs from the next one a prefetch announced (the computation is not the
    one that was traced); the provider then refuses every later request."""


def canonical(request: dict) -> str:
    """A request's compact JSON, keys sorted: what the dealer receives (and what the specs
    count as its bytes); equal for equal requests, tuples or lists alike."""
    return json.dumps(request, separators=(",", ":"), sort_keys=True)


def check_prefetch(requests: list[dict], repeats: int, window: int) -> None:
    """ValueError unless requests is a list of valid requests, repeats an int >= 0 and
    window an int >= 1."""
    if not isinstance(requests, (list, tuple)):
        raise ValueError(f"prefetch: requests must be a list of correlation requests, "
                         f"got {type(requests).__name__}")
    for i, request in enumerate(requests):
        if not isinstance(request, dict) or not isinstance(request.get("params"), dict):
            raise ValueError(f"prefetch: request #{i} is not a correlation request: {request!r}")
        try:
            kind_of(request)
        except ValueError as e:
            raise ValueError(f"prefetch: request #{i}: {e}") from None
    for name, value, low in (("repeats", repeats, 0), ("window", window, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"prefetch: {name} must be an integer >= {low}, got {value!r}")


def make_request(kind: str, **params) -> dict:
    """A JSON-able correlation request."""
    request = {"kind": kind, "params": params}
    kind_of(request)
    return request
