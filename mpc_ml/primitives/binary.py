"""Binary (XOR) sharing of 64-bit words, AND, adders and conversions.

A word w is held as shares w_0 .. w_{n-1} with XOR_i w_i = w. XOR is local; AND uses
a binary Beaver triple (same steps as arithmetic Beaver with XOR for + and AND for *):
1. obtain [a], [b], [c] = [a & b]; 2. open e = x ^ a, f = y ^ b (one round);
3. z_i = c_i ^ (a_i & f) ^ (e & (b_i ^ [i = 0] f)).

A2B adds the parties' arithmetic shares as binary words: each party's share is a word
only it holds; carry-save adders (one AND round each) reduce n words to two, and a
radix-4 Kogge-Stone adder (Kogge & Stone 1973) adds those: generate and propagate (one
AND round), then log4(64) = 3 levels of the fan-in-4 carry operator, each one round of
multi-input ANDs (and_monomials).
B2A opens x ^ r for a daBit word r whose bits the provider also shares additively,
then [x_j] = c_j + [r_j] - 2 c_j [r_j] (Rotaru & Wood, "MArBled circuits", 2019).
"""
from __future__ import annotations

import numpy as np
import torch

from ..core import ring
from ..core.ring import bits_at
from ..session import Session
from ..providers.base import bit_rows, monomial_entry, monomial_subsets, shift_rows
from .sharing import ride, take_riders

WORD_BITS = 64
LOG_WORD_BITS = 6


def held_by(session: Session, value: torch.Tensor, owner: int) -> torch.Tensor:
    """A binary sharing of a word that `owner` knows: owner holds it, others hold 0."""
    return value if session.rank == owner else torch.zeros_like(value)


def public_word(session: Session, value: torch.Tensor) -> torch.Tensor:
    """A binary sharing of a public word (party 0 holds it)."""
    return held_by(session, value, 0)


def _xor_reduce(parts: list[torch.Tensor]) -> torch.Tensor:
    total = parts[0].clone()
    for p in parts[1:]:
        total ^= p.to(total.device)
    return total


def _gather_with_riders(session: Session, own: torch.Tensor) -> list[torch.Tensor]:
    """all_gather of own (int64 or uint8) with the queued arithmetic riders appended; the
    riders' opened sums are delivered, and each party's own part is returned."""
    rider_flat, deliver = take_riders(session)
    if not rider_flat:
        return session.comm.all_gather(own)
    riders = torch.cat(rider_flat).to(own.device)
    tail = riders.view(torch.uint8) if own.dtype == torch.uint8 else riders
    gathered = session.comm.all_gather(torch.cat([own, tail]))
    heads, total = [], torch.zeros_like(riders)
    for g in gathered:
        heads.append(g[:own.numel()])
        rest = g[own.numel():].to(own.device)
        total += rest.clone().view(torch.int64) if own.dtype == torch.uint8 else rest
    deliver(total)
    return heads


def open_words(session: Session, words: list[torch.Tensor]) -> list[torch.Tensor]:
    """Reveal XOR-shared words to all parties in one round (8 bytes per element per peer),
    with the queued arithmetic riders (sharing.ride)."""
    flat = torch.cat([w.reshape(-1) for w in words])
    total = _xor_reduce(_gather_with_riders(session, flat))
    out, offset = [], 0
    for w in words:
        out.append(total[offset:offset + w.numel()].reshape(w.shape).to(w.device))
        offset += w.numel()
    return out


_BYTE_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' order: the first bit is the top


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 values packed 8 to a uint8, first bit highest (np.packbits), on bits' device
    (numpy on the host, where it is 4x faster than torch's ops)."""
    flat = bits.reshape(-1).to(torch.uint8)
    if ring.on_host(flat):
        return torch.from_numpy(np.packbits(flat.numpy()))
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    weights = torch.tensor(_BYTE_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first count bits of pack_bits' bytes, as 0/1 int64, on packed's device."""
    if ring.on_host(packed):
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=count)).to(torch.int64)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1)[:count].to(torch.int64)


def open_bits(session: Session, bits: torch.Tensor) -> torch.Tensor:
    """Reveal XOR-shared 0/1 values to all parties in one round, packed 8 to a byte (with
    the queued arithmetic riders)."""
    packed = pack_bits(bits)
    total = _xor_reduce([p.to(packed.device) for p in _gather_with_riders(session, packed)])
    return unpack_bits(total, bits.numel()).reshape(bits.shape)


def and_many(session: Session, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """x & y for each pair of XOR-shared words (equal shapes), all in one round.

    Rounds 1; bytes 16 * (n - 1) * total numel sent per party.
    """
    xs = torch.cat([x.reshape(-1) for x, _ in pairs])
    ys = torch.cat([y.reshape(-1) for _, y in pairs])
    corr = session.provider.request("btriple", shape=[xs.numel()])
    a, b = (t.to(xs.device) for t in corr.free)
    e, f = open_words(session, [xs ^ a, ys ^ b])
    z = (a & f) ^ (e & (b ^ f if session.rank == 0 else b))
    z ^= corr.derived()[0].to(z.device)
    out, offset = [], 0
    for x, _ in pairs:
        out.append(z[offset:offset + x.numel()].reshape(x.shape))
        offset += x.numel()
    return out


def and_monomials(session: Session, inputs: list[torch.Tensor], monomials: list[tuple],
                  ones_outside: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """XOR shares of the AND of the monomial's inputs, for each monomial, all in one round.

    A monomial is a tuple of entries: i (inputs[i]) or (i, s) (inputs[i] with its rows
    shifted by s: row r reads row r - s, for inputs shaped (rows, words)); rows shifted in
    from outside read as 0, or as 1 for the inputs in ones_outside. Inputs share one shape.

    Beaver's AND with more inputs (the extended triples of Ohata & Nuida, FC 2020; ABY2.0's
    multi-input gates, Patra et al. 2021): open e_i = x_i ^ a_i for a fresh uniform mask
    a_i per input; with [a_S] = AND of the (shifted) masks over S from the provider for
    every subset S of two or more entries of a monomial, AND_{j in M} x_j = XOR over S
    subset of M of (AND_{j in M \\ S} e_j) & [a_S] ([a_{}] = all ones, held by party 0).
    Rounds 1; bytes 8 * (n - 1) * len(inputs) * numel sent per party.
    """
    shape = inputs[0].shape
    rows = any(not isinstance(e, int) for m in monomials for e in m)
    flat = [x if rows else x.reshape(-1) for x in inputs]
    canon = [sorted(monomial_entry(e) for e in m) for m in monomials]
    listed = [[i if s == 0 else [i, s] for i, s in m] for m in canon]
    corr = session.provider.request("band", shape=list(flat[0].shape), inputs=len(flat),
                                    monomials=listed)
    masks = [a.to(flat[0].device) for a in corr.free]
    opened = open_words(session, [x ^ a for x, a in zip(flat, masks)])

    def public(i: int, shift: int) -> torch.Tensor:
        moved = shift_rows(opened[i], shift)
        if i in ones_outside and shift:
            moved = moved | ~shift_rows(torch.full_like(moved, -1), shift)
        return moved
    held = {((i, s),): shift_rows(a, s) for i, a in enumerate(masks)
            for s in {s for m in canon for j, s in m if j == i}}
    held.update(zip(monomial_subsets(listed), (d.to(flat[0].device) for d in corr.derived())))
    out = []
    for mono in canon:
        z = None
        for chosen in range(1 << len(mono)):
            subset = tuple(e for j, e in enumerate(mono) if chosen >> j & 1)
            if not subset and session.rank != 0:
                continue
            term = held.get(subset)
            for j, e in enumerate(mono):
                if not chosen >> j & 1:
                    term = public(*e) if term is None else term & public(*e)
            z = term if z is None else z ^ term
        out.append((z if z is not None else torch.zeros_like(flat[0])).reshape(shape))
    return out


def combine_groups(session: Session, g: list[torch.Tensor], p: list[torch.Tensor],
                   need_propagate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The carry operator on four adjacent groups (g[0], p[0] the lowest), in one round:
    G = g3 ^ p3 g2 ^ p3 p2 g1 ^ p3 p2 p1 g0, P = p3 p2 p1 p0 (Brent & Kung's operator, with
    fan-in 4; the terms are disjoint, so XOR is their OR). P only if need_propagate."""
    inputs = ([p[0]] if need_propagate else []) + [p[1], p[2], p[3], g[0], g[1], g[2]]
    o = 1 if need_propagate else 0
    p1, p2, p3, g0, g1, g2 = range(o, o + 6)
    monomials = [(p3, g2), (p2, p3, g1), (p1, p2, p3, g0)]
    monomials += [(0, p1, p2, p3)] if need_propagate else []
    terms = and_monomials(session, inputs, monomials)
    return g[3] ^ terms[0] ^ terms[1] ^ terms[2], (terms[3] if need_propagate else None)


SPANS = (1, 4, 16)
"""The radix-4 carry levels on whole words: group spans 1, 4 and 16 positions."""


def carries(session: Session, u: torch.Tensor, v: torch.Tensor,
            own_words: bool = False) -> torch.Tensor:
    """Word whose bit i is the carry out of position i of u + v (XOR-shared words): a
    radix-4 Kogge-Stone prefix (1 + 3 rounds). Level s combines, at each position i, the
    groups ending at i, i - s, i - 2s and i - 3s (shifts of G and P, zero-filled).
    own_words: u and v are reduce_to_two's words of additive shares (and_first)."""
    p = u ^ v
    g = and_first(session, u, v) if own_words else and_many(session, [(u, v)])[0]
    for s in SPANS:
        last = s == SPANS[-1]
        g, p = combine_groups(session, [g << (3 * s), g << (2 * s), g << s, g],
                              [p << (3 * s), p << (2 * s), p << s, p], not last)
    return g


def and_held(session: Session, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u & v for a word u that party 0 holds and a word v that party 1 holds (2 parties:
    their own shares of x, before any carry-save), in one round of 8 bytes per element each
    way, half of and_many's: with a held by party 0, b by party 1 and [a & b], party 0 sends
    e = u ^ a, party 1 sends f = v ^ b; then u & v = e & f ^ a & f (party 0) ^ e & b
    (party 1) ^ [a & b]."""
    corr = session.provider.request("held_btriple", shape=list(u.shape))
    a, b = (t.to(u.device) for t in corr.free)
    own = (u ^ a) if session.rank == 0 else (v ^ b)
    e, f = (g.to(u.device) for g in _gather_with_riders(session, own.reshape(-1)))
    e, f = e.reshape(u.shape), f.reshape(u.shape)
    (c,) = corr.derived()
    z = (e & f) ^ (a & f) if session.rank == 0 else e & b
    return z ^ c.to(u.device)


def and_first(session: Session, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u & v for the two words reduce_to_two returns from additive shares: and_held for 2
    parties (each word is then one party's own share), else and_many."""
    if session.world_size == 2:
        return and_held(session, u, v)
    return and_many(session, [(u, v)])[0]


def reduce_to_two(session: Session, words: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry-save adders: n XOR-shared words to two with the same sum mod 2^64.

    Each round turns every 3 words a, b, c into a ^ b ^ c and maj(a, b, c) << 1, where
    maj = ((a ^ c) & (b ^ c)) ^ c costs one AND.
    """
    words = list(words)
    if len(words) == 1:  # a 1-party world (CrypTen's notebook mode): the word is the sum
        return words[0], torch.zeros_like(words[0])
    while len(words) > 2:
        triples = [words[i:i + 3] for i in range(0, len(words) - len(words) % 3, 3)]
        rest = words[len(triples) * 3:]
        majs = and_many(session, [(a ^ c, b ^ c) for a, b, c in triples])
        words = rest
        for (a, b, c), m in zip(triples, majs):
            words += [a ^ b ^ c, (m ^ c) << 1]
    return words[0], words[1]


def binary_add(session: Session, u: torch.Tensor, v: torch.Tensor,
               own_words: bool = False) -> torch.Tensor:
    """u + v mod 2^64 on XOR-shared words: (u ^ v) ^ (carries << 1), 4 rounds."""
    return u ^ v ^ (carries(session, u, v, own_words) << 1)


def a2b(session: Session, x: torch.Tensor) -> torch.Tensor:
    """XOR shares of the word whose additive shares are x.

    Rounds 4 + (carry-save rounds: 0 for n = 2, 1 for 3, 2 for 4).
    """
    words = [held_by(session, x, owner) for owner in range(session.world_size)]
    u, v = reduce_to_two(session, words)
    return binary_add(session, u, v, own_words=True)


def _bit_slices(word: torch.Tensor) -> torch.Tensor:
    """(64, W) bit-sliced form of a flat int64 tensor padded to W * 64 elements: row i,
    column b packs bit i of elements 64b .. 64b + 63 (element 64b + e at bit e).

    A 64x64 bit-matrix transpose per block (Hacker's Delight, section 7-3): six rounds of
    shift-mask-swap on whole tensors. It is linear over XOR, so it maps XOR shares of
    words to XOR shares of slices.
    """
    pad = (-word.numel()) % 64
    flat = torch.cat([word.reshape(-1), word.new_zeros(pad)]) if pad else word.reshape(-1)
    if not bool(flat.any()):  # a share this party knows to be zero
        return flat.new_zeros(64, flat.numel() // 64)
    a = flat.reshape(-1, 64).flip(1).contiguous()  # reversed, so element e lands on bit e
    j, mask = 32, (1 << 32) - 1
    while j:
        pairs = a.view(a.shape[0], 64 // (2 * j), 2, j)
        lo, hi = pairs[:, :, 0, :], pairs[:, :, 1, :]
        signed = mask - (1 << 64) if mask >= 1 << 63 else mask
        t = (lo ^ (hi >> j)) & signed  # the mask also clears the arithmetic shift's fill
        lo ^= t
        hi ^= t << j
        j >>= 1
        mask ^= (mask << j) & ((1 << 64) - 1)
    return a.flip(1).t().contiguous()


SLICED_FROM = 13
"""msb on fewer elements runs the radix-4 carries on whole words (22 words opened per
element, 21 for 2 parties) instead of the carry tree on bit slices (272 per 64 elements,
209 for 2 parties): cheaper below 13 (below 10 for 2 parties)."""


def msb(session: Session, x: torch.Tensor) -> torch.Tensor:
    """XOR shares of the top bit of additively shared x (0/1 int64, x's shape).

    Only the carry into bit 63 is needed, so instead of a full adder this runs a carry
    tree on bit-sliced words (64 elements per word): generate/propagate bits of the low
    63 positions and a dummy position below them that generates nothing (1 AND round),
    then 3 levels of the fan-in-4 carry operator (combine_groups) on 64 -> 16 -> 4 -> 1
    groups: 4 rounds. Below SLICED_FROM elements the sliced words would be mostly
    padding, and the carries of whole words (carries) are cheaper.
    """
    words = [held_by(session, x.reshape(-1), owner) for owner in range(session.world_size)]
    u, v = reduce_to_two(session, words)
    if x.numel() < SLICED_FROM:
        return (((u ^ v) >> 63 ^ carries(session, u, v, own_words=True) >> 62) & 1).reshape(x.shape)
    su, sv = _bit_slices(u), _bit_slices(v)
    g = and_first(session, su[:63], sv[:63])
    none = g.new_zeros(1, g.shape[1])
    g, p = torch.cat([none, g]), torch.cat([none, su[:63] ^ sv[:63]])
    while g.shape[0] > 1:
        g, p = combine_groups(session, [g[j::4] for j in range(4)], [p[j::4] for j in range(4)],
                              g.shape[0] > 4)
    packed = su[63] ^ sv[63] ^ g[0]
    shifts = torch.arange(64, dtype=torch.int64, device=packed.device)
    bits = ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1)[:x.numel()]
    return bits.reshape(x.shape)


def bit_products(session: Session, bit: torch.Tensor,
                 values: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(additive integer shares of an XOR-shared 0/1 bit, and of value_k * bit for each
    additively shared value), in one round: the B2A and the products by the bit at once.

    Each value has the bit's shape, or fewer rows (it multiplies the bit's leading rows),
    possibly with trailing dims over which the bit is broadcast. With a fresh bit r
    (XOR-shared, and [r] additive) and masks a_k with [r a_k] from the provider, open
    c = bit ^ r and e_k = value_k - a_k; then [bit] = c + (1 - 2c) [r] and
    value_k * bit = c e_k + c [a_k] + (1 - 2c)(e_k [r] + [r a_k]).
    Bytes: ceil(numel / 8) + 8 * sum of the values' numel to each peer.
    """
    corr = session.provider.request("bit_product", shape=list(bit.shape),
                                    value_shapes=[list(v.shape) for v in values])
    r, *masks = (t.to(bit.device) for t in corr.free)
    opened: list[torch.Tensor] = []
    for v, a in zip(values, masks):
        ride(session, v - a, opened.append)
    c = open_bits(session, (bit ^ r) & 1)
    r_arith, *r_masks = (t.to(bit.device) for t in corr.derived())
    bit_share = r_arith * (1 - 2 * c) + (c if session.rank == 0 else 0)
    products = []
    for v, a, ra, e in zip(values, masks, r_masks, opened):
        cb, rb = bit_rows(c, tuple(v.shape)), bit_rows(r_arith, tuple(v.shape))
        z = cb * a + (1 - 2 * cb) * (e * rb + ra)
        products.append(z + cb * e if session.rank == 0 else z)
    return bit_share, products


def unslice(rows: torch.Tensor, numel: int) -> torch.Tensor:
    """The words (flat, numel of them) of bit-sliced rows (64, W): _bit_slices undone (the
    64x64 bit transpose of each block is its own inverse)."""
    return _bit_slices(rows.t().reshape(-1)).t().reshape(-1)[:numel]


def sliced_sum(session: Session, x: torch.Tensor) -> torch.Tensor:
    """A2B in bit-sliced form: rows (64, ceil(m / 64)), row j packing bit j of the words
    whose additive shares are x (flat, m elements), XOR-shared.

    The carries are a radix-4 Kogge-Stone prefix on the rows: after the generate/propagate
    round, level t combines, for every row r at once, the groups ending at rows r, r - t,
    r - 2t and r - 3t: and_monomials of the two inputs G and P with row-shifted entries,
    (P, (G, t)), (P, (P, t), (G, 2t)), (P, (P, t), (P, 2t), (G, 3t)) and the new propagate.
    Each level opens 2 words per 64 elements and bit position: 16 bytes per element per
    level, against 56 for whole words.
    """
    words = [held_by(session, x.reshape(-1), owner) for owner in range(session.world_size)]
    u, v = reduce_to_two(session, words)
    su, sv = _bit_slices(u), _bit_slices(v)
    p = su ^ sv
    g = and_first(session, su, sv)
    prop = p
    for t in SPANS:
        monomials = [((0, t), 1), ((0, 2 * t), 1, (1, t)), ((0, 3 * t), 1, (1, t), (1, 2 * t))]
        if t != SPANS[-1]:
            monomials.append((1, (1, t), (1, 2 * t), (1, 3 * t)))
        terms = and_monomials(session, [g, prop], monomials)
        g = g ^ terms[0] ^ terms[1] ^ terms[2]
        prop = terms[3] if t != SPANS[-1] else None
    return p ^ shift_rows(g, 1)


def _open_masked_bits(session: Session, word: torch.Tensor, positions: list[int]):
    """(c, r_bits): the opened bits of word ^ r at positions (0/1 int64, trailing dim) for a
    fresh daBit word r, and this party's additive shares of r's bits there. One round:
    all 64 positions travel as the masked word itself, fewer as packed bits."""
    corr = session.provider.request("dabits", shape=list(word.shape), positions=list(positions))
    (r,) = corr.free
    masked = word ^ r.to(word.device)
    if list(positions) == list(range(WORD_BITS)):
        c = bits_at(open_words(session, [masked])[0], positions)
    else:
        c = open_bits(session, bits_at(masked, positions))
    (r_bits,) = corr.derived()
    return c, r_bits.to(word.device)


def b2a_bits(session: Session, word: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Additive shares of the bits of an XOR-shared word at these positions (trailing dim):
    [b_j] = c_j + [r_j] - 2 c_j [r_j]. One round; ceil(numel * len(positions) / 8) bytes
    to each peer."""
    c, r_bits = _open_masked_bits(session, word, positions)
    out = r_bits * (1 - 2 * c)
    return out + c if session.rank == 0 else out


def b2a_weighted(session: Session, word: torch.Tensor, positions: list[int],
                 weights: torch.Tensor) -> torch.Tensor:
    """Additive shares of sum_j weights[j, k] * bit_{positions[j]}(word) for each column k
    of a public int64 matrix (trailing dim k): b2a_bits and the weighting in one int64
    matmul, without keeping every bit's share. One round, as b2a_bits."""
    c, r_bits = _open_masked_bits(session, word, positions)
    p, w = len(positions), weights.to(word.device)
    out = torch.where(c.bool(), -r_bits, r_bits).reshape(-1, p) @ w  # r_j (1 - 2 c_j)
    if session.rank == 0:
        out += c.reshape(-1, p) @ w
    return out.reshape(*word.shape, w.shape[1])


def b2a(session: Session, word: torch.Tensor) -> torch.Tensor:
    """Additive shares of an XOR-shared word: sum_j 2^j [bit_j] (one round, 8 bytes/element)."""
    powers = torch.ones(WORD_BITS, 1, dtype=torch.int64) << torch.arange(WORD_BITS).unsqueeze(1)
    return b2a_weighted(session, word, list(range(WORD_BITS)), powers)[..., 0]
