"""The offline phase (protocols/offline.toml): trace one run, prefetch N, run N more.

Results equal a run without prefetch (within fixed-point rounding) and plaintext torch;
the correction party sends the dealer no request during prefetched runs (every control
message it sends is recorded), its counters equal the spec's formulas (evaluated here
from the traced requests, independently of the implementation's encoder); a run that
differs from the traced one raises PrefetchDivergence on every party and nothing
hangs; the dealer keeps at most `window` repeats in flight; under tfp prefetch does
nothing. Parties are threads (inproc); data comes from seeded torch.Generators.
"""
from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from helpers import COUNTERS, DEALER_COUNTERS, assert_near, check_spec, dealer_counters, enc, gen
from mpc_ml.comm import DEALER_RANK, inproc
from mpc_ml.comm.inproc import InprocLink
from mpc_ml.core.specs import evaluate_table, load_spec
from mpc_ml.providers import dealer as dealer_mod
from mpc_ml.providers.base import KINDS, PrefetchDivergence
from mpc_ml.session import current
from mpc_ml.tensor import trace_correlations
from mpc_ml.tensor.trace import prefetch

SPEC = load_spec("offline")
REPEATS = 3
CHUNK_BYTES = 60_000  # the spec's chunk_bytes
TOL = 1e-2  # against torch (a few fixed-point products and truncations deep)
SAME = 2e-3  # prefetched against not prefetched: fixed-point rounding only


# -- what the spec's variables are, computed from a request list ------------------------------
def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def runs_of(requests: list[dict]) -> list[list]:
    runs: list[list] = []
    for r in requests:
        if runs and compact(runs[-1][1]) == compact(r):
            runs[-1][0] += 1
        else:
            runs.append([1, r])
    return runs


def spec_chunks(runs: list[list], repeats: int, window: int, chunk_bytes: int) -> int:
    """announcement_messages per the spec: entries greedily into messages of <= chunk_bytes."""
    fixed = 49 + len(str(repeats)) + len(str(window))  # {"more":false,"prefetch":[],...}
    chunks, size, count = 1, fixed, 0
    for entry in runs:
        n = len(compact(entry))
        if count and size + 1 + n > chunk_bytes:
            chunks, size, count = chunks + 1, fixed, 0
        size += n + (1 if count else 0)
        count += 1
    return chunks


def correction_bytes(requests: list[dict]) -> int:
    return sum(8 * math.prod(shape) for r in requests
               for shape in KINDS[r["kind"]].derived_shapes(r["params"]))


def spec_sizes(requests: list[dict], repeats: int, window: int = 2,
               chunk_bytes: int = CHUNK_BYTES, run: dict | None = None) -> dict:
    runs = runs_of(requests)
    sizes = {"requests": len(requests), "runs": len(runs),
             "entry_bytes": sum(len(compact(e)) for e in runs),
             "request_bytes_total": sum(len(compact(r)) for r in requests),
             "correction_bytes": correction_bytes(requests), "repeats": repeats,
             "repeats_digits": len(str(repeats)), "window_digits": len(str(window)),
             "announcement_messages": spec_chunks(runs, repeats, window, chunk_bytes)}
    for k in COUNTERS:
        sizes[f"run_{k}"] = (run or {}).get(k, 0)
    return sizes


def expected(section: dict, n: int, rank: int, sizes: dict) -> dict:
    out = evaluate_table(section["cost"]["all"], n=n, rank=rank, **sizes)
    out.update(dealer_counters(section["dealer"], n=n, rank=rank, **sizes))
    return out


def dealer_part(stats: dict) -> dict:
    return {k: stats[k] for k in DEALER_COUNTERS}


# -- recording what the correction party sends the dealer --------------------------------------
@pytest.fixture
def to_dealer(monkeypatch):
    """Every control message an inproc party sends the dealer after set-up: (rank, message)."""
    sent: list[tuple[int, dict]] = []
    lock = threading.Lock()
    original = inproc.InprocLink.send

    def send(self, msg):
        if self.peer == DEALER_RANK and isinstance(msg, dict) and "x25519" not in msg:
            with lock:
                sent.append((self.me, dict(msg)))
        return original(self, msg)

    monkeypatch.setattr(inproc.InprocLink, "send", send)
    return sent


def kinds_of(messages: list[dict]) -> list[str]:
    """'request', 'announce' or 'ack' for each message, run-length encoded as 'kind*count'."""
    names = ["ack" if "ack" in m else "announce" if "prefetch" in m else "request"
             for m in messages]
    out: list[str] = []
    for name in names:
        if out and out[-1].rsplit("*", 1)[0] == name:
            base, count = out[-1].rsplit("*", 1)
            out[-1] = f"{base}*{int(count) + 1}"
        else:
            out.append(f"{name}*1")
    return out


# -- party bodies -------------------------------------------------------------------------------
def mlp(seed: int = 5) -> torch.nn.Module:
    g = gen(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model


def batches(count: int, batch: int = 6, seed: int = 11) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = gen(seed)
    out = []
    for _ in range(count):
        x = torch.rand(batch, 12, generator=g)
        y = F.one_hot(torch.randint(3, (batch,), generator=g), 3).to(torch.float32)
        out.append((x, y))
    return out


def infer_party(torch_model, data, use_prefetch: bool, window=None) -> dict:
    """A traced forward, (maybe) prefetch len(data) - 2, those runs, then one more run."""
    model = mpc.nn.from_pytorch(torch_model, data[0][0])
    model.encrypt(src=0)
    with mpc.no_grad():  # opens the weights against their fixed masks; every later run reuses them
        model(enc(data[0][0], src=1))
    outs, stats = [], []
    trace = None
    for i, (x, _) in enumerate(data):
        xe = enc(x, src=1)
        if i == 1:
            mpc.reset_stats()
            if use_prefetch:
                trace.prefetch(len(data) - 2, **({} if window is None else {"window": window}))
            prefetch_stats = mpc.stats()
        mpc.reset_stats()
        with mpc.no_grad():
            if i == 0:
                with trace_correlations() as trace:
                    y = model(xe)
            else:
                y = model(xe)
        stats.append(mpc.stats())
        outs.append(y.decrypt())
    return {"outs": outs, "stats": stats, "prefetch": prefetch_stats, "requests": trace.requests()}


def train_party(torch_model, data, use_prefetch: bool) -> dict:
    """SGD steps of an MLP: the first traced, then (maybe) prefetch len(data) - 2 steps,
    those steps, and one more (per request again)."""
    model = mpc.nn.from_pytorch(torch_model, data[0][0])
    model.encrypt(src=0)
    opt = mpc.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = mpc.nn.CrossEntropyLoss()
    stats, losses = [], []
    trace = None
    for i, (x, y) in enumerate(data):
        xe, ye = enc(x, src=1), enc(y, src=1)
        if i == 1 and use_prefetch:
            prefetch(trace, len(data) - 2)
        mpc.reset_stats()
        if i == 0:
            with trace_correlations() as trace:
                opt.zero_grad()
                loss = loss_fn(model(xe), ye)
                loss.backward()
                opt.step()
        else:
            opt.zero_grad()
            loss = loss_fn(model(xe), ye)
            loss.backward()
            opt.step()
        stats.append(mpc.stats())
        losses.append(loss.decrypt())
    weights = {k: v.clone() for k, v in model.decrypt().state_dict().items()}
    return {"weights": weights, "losses": losses, "stats": stats, "requests": trace.requests()}


def torch_training(torch_model, data) -> tuple[dict, list]:
    model = mlp()
    model.load_state_dict(torch_model.state_dict())
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(x.double()), y.double())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.state_dict(), losses


# -- the spec -------------------------------------------------------------------------------------
def test_spec_is_complete_and_its_formulas_evaluate():
    names = dict.fromkeys(SPEC["variables"], 7) | {"rank": 1}
    check_spec(SPEC, "offline", ("title", "computes", "security_model", "references", "variables",
                                 "reveals", "window"), ["Beaver", "SecureML"], names)


# -- inference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_prefetched_inference_matches_and_sends_no_request(n, to_dealer):
    torch_model = mlp()
    data = batches(REPEATS + 2)
    plain = mpc.run(infer_party, n, args=(torch_model, data, False))
    to_dealer.clear()
    pre = mpc.run(infer_party, n, args=(torch_model, data, True))
    with torch.no_grad():
        want = [torch_model.double()(x.double()) for x, _ in data]
    for rank in range(n):
        for i, (a, b, w) in enumerate(zip(pre[rank]["outs"], plain[rank]["outs"], want)):
            assert_near(a, w, TOL, f"party {rank} run {i} (prefetched) vs torch")
            assert_near(a, b, SAME, f"party {rank} run {i}: prefetched vs not")
    requests = pre[n - 1]["requests"]
    assert requests and all(p["requests"] == requests for p in pre)
    L = len(requests)
    # What the correction party sent the dealer: the traced run's requests, the
    # announcement, one acknowledgement per prefetched run, then requests again.
    assert {rank for rank, _ in to_dealer} == {n - 1}
    # (before them, the warm-up query's requests: the same list)
    assert kinds_of([m for _, m in to_dealer]) == [f"request*{2 * L}", "announce*1",
                                                   f"ack*{REPEATS}", f"request*{L}"]
    sent_requests = [m for _, m in to_dealer if "kind" in m]
    assert [compact(m) for m in sent_requests[L:2 * L]] == [compact(r) for r in requests]
    # Counters against the spec, for every party.
    for rank in range(n):
        stats = pre[rank]["stats"]
        run = {k: stats[0][k] for k in COUNTERS}
        sizes = spec_sizes(requests, REPEATS, run=run)
        assert pre[rank]["prefetch"] == expected(SPEC, n, rank, sizes), f"party {rank}: prefetch"
        for i in (0, REPEATS + 1):
            assert stats[i] == expected(SPEC["per_request_run"], n, rank, sizes), (rank, i)
        for i in range(1, REPEATS + 1):
            assert stats[i] == expected(SPEC["prefetched_run"], n, rank, sizes), (rank, i)
        assert plain[rank]["stats"][1] == stats[0]  # without prefetch every run is per request


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_prefetched_training_steps_match_torch(n, to_dealer):
    torch_model = mlp()
    data = batches(REPEATS + 2, batch=8, seed=23)
    plain = mpc.run(train_party, n, args=(torch_model, data, False))
    to_dealer.clear()
    pre = mpc.run(train_party, n, args=(torch_model, data, True))
    want_weights, want_losses = torch_training(torch_model, data)
    for rank in range(n):
        for k, w in want_weights.items():
            assert_near(pre[rank]["weights"][k], w, TOL, f"party {rank}: {k} after {len(data)} steps")
            assert_near(pre[rank]["weights"][k], plain[rank]["weights"][k], SAME,
                        f"party {rank}: {k}, prefetched vs not")
        for i, (got, w) in enumerate(zip(pre[rank]["losses"], want_losses)):
            assert_near(got, torch.tensor(w), TOL, f"party {rank}: loss of step {i}")
    requests = pre[n - 1]["requests"]
    kinds = {r["kind"] for r in requests}
    assert {"triple", "trunc", "band", "bit_product"} <= kinds, kinds
    L = len(requests)
    assert kinds_of([m for _, m in to_dealer]) == [f"request*{L}", "announce*1", f"ack*{REPEATS}",
                                                   f"request*{L}"]
    for rank in range(n):
        stats = pre[rank]["stats"]
        sizes = spec_sizes(requests, REPEATS, run={k: stats[0][k] for k in COUNTERS})
        for i in range(1, REPEATS + 1):
            assert stats[i] == expected(SPEC["prefetched_run"], n, rank, sizes), (rank, i)
            assert stats[i] == {**plain[rank]["stats"][i], **dealer_part(stats[i])}


# -- a computation that is not the traced one -----------------------------------------------------------
def diverging_party(change_at: int) -> list[str]:
    """Trace x * y; prefetch 2; the run with index change_at (0 or 1) takes another shape."""
    a = enc(torch.rand(4, 5, generator=gen(1)), src=0)
    b = enc(torch.rand(4, 5, generator=gen(2)), src=1)
    with trace_correlations() as trace:
        (a * b).relu().decrypt()
    trace.prefetch(2)
    messages = []
    for i in range(2):
        x = a if i != change_at else enc(torch.rand(3, 5, generator=gen(3)), src=0)
        y = b if i != change_at else enc(torch.rand(3, 5, generator=gen(4)), src=1)
        try:
            (x * y).relu().decrypt()
        except PrefetchDivergence as e:
            messages.append(str(e))
            break
    try:  # the provider refuses everything after a divergence
        (a * b).decrypt()
    except PrefetchDivergence as e:
        messages.append(str(e))
    return [messages, len(trace.requests())]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("change_at", [0, 1])
def test_a_diverging_run_raises_the_named_error_on_every_party(n, change_at):
    start = time.monotonic()
    outs = mpc.run(diverging_party, n, args=(change_at,), config=mpc.Config(comm_timeout_s=20))
    assert time.monotonic() - start < 15
    for rank, (messages, length) in enumerate(outs):
        k = change_at * length
        assert len(messages) == 2, (rank, messages)
        first = messages[0]
        assert f"the computation diverged from the prefetched correlations at request #{k}: " \
               "expected " in first, first
        assert '"shape":[4,5]' in first or '"a_shape":[4,5]' in first, first
        assert ', got {"kind":"triple"' in first and "[3,5]" in first, first
        assert f"repeat {change_at + 1} of 2" in first
        assert messages[1] == first


def raising_party() -> None:
    a = enc(torch.rand(4, 5, generator=gen(1)), src=0)
    with trace_correlations() as trace:
        (a * a).decrypt()
    trace.prefetch(3)
    (a.relu()).decrypt()


def test_a_divergence_fails_the_job_and_nothing_hangs():
    start = time.monotonic()
    with pytest.raises(mpc.PartyError) as info:
        mpc.run(raising_party, 3, config=mpc.Config(comm_timeout_s=20))
    assert time.monotonic() - start < 15
    assert "diverged from the prefetched correlations at request #0" in str(info.value)
    assert "PrefetchDivergence" in str(info.value)


# -- the window, queued prefetches, going back to per-request mode -----------------------------------
def window_party(window: int, repeats: int) -> list:
    """Prefetch `repeats` runs of one traced product; returns what each run needs from the
    dealer and the results."""
    a = enc(torch.rand(3, 3, generator=gen(1)), src=0)
    with trace_correlations() as trace:
        (a * a).decrypt()
    per_repeat = sum(len(KINDS[r["kind"]].derived_shapes(r["params"])) for r in trace.requests())
    trace.prefetch(repeats, window=window)
    return [per_repeat, [(a * a).decrypt() for _ in range(repeats)]]


@pytest.mark.parametrize("window", [1, 2])
def test_the_dealer_keeps_at_most_window_repeats_in_flight(window, monkeypatch):
    """Watched at the dealer's own link: after the announcement, each correction it sends
    belongs to a repeat within `window` of the acknowledgements it has received."""
    repeats, events = 5, []
    real_send, real_recv = InprocLink.send, InprocLink.recv

    def send(self, msg):
        if self.me == DEALER_RANK and isinstance(msg, torch.Tensor):
            events.append("correction")
        return real_send(self, msg)

    def recv(self, timeout):
        msg = real_recv(self, timeout)
        if self.me == DEALER_RANK and isinstance(msg, dict):
            events.append("ack" if msg == {"ack": 1} else
                          "announcement" if "prefetch" in msg else "request")
        return msg

    monkeypatch.setattr(InprocLink, "send", send)
    monkeypatch.setattr(InprocLink, "recv", recv)
    x = torch.rand(3, 3, generator=gen(1))
    per_repeat, results = mpc.run(window_party, 2, args=(window, repeats))[1]
    assert per_repeat == 1  # c of the triple (the product is left pending: no truncation)
    after = events[events.index("announcement") + 1:]
    sent = acks = 0
    for event in after:
        if event == "ack":
            acks += 1
        elif event == "correction":
            sent += 1
            assert (sent - 1) // per_repeat < acks + window, (window, after)
    assert sent == repeats * per_repeat and acks == repeats, after
    for r in results:
        assert_near(r, x.double() * x.double(), 1e-3, "a * a")


def queued_party() -> list:
    a = enc(torch.rand(2, 3, generator=gen(1)), src=0)
    b = enc(torch.rand(3, 4, generator=gen(2)), src=1)
    with trace_correlations() as mul:
        (a * a).decrypt()
    with trace_correlations() as matmul:
        (a @ b).decrypt()
    mul.prefetch(2)
    matmul.prefetch(1)  # queued behind the first
    prefetch(mul.requests() + matmul.requests(), 1)  # a plain list works too
    mpc.reset_stats()
    out = [(a * a).decrypt(), (a * a).decrypt(), (a @ b).decrypt(), (a * a).decrypt(),
           (a @ b).decrypt()]
    mid = mpc.stats()
    out.append((a @ b).decrypt())  # per request again
    return [out, dealer_part(mid), dealer_part(mpc.stats())]


def test_prefetches_queue_up_and_then_requests_go_per_operation_again(to_dealer):
    a, b = torch.rand(2, 3, generator=gen(1)), torch.rand(3, 4, generator=gen(2))
    outs = mpc.run(queued_party, 2)
    got, mid, end = outs[1]
    for i, want in zip(range(6), [a * a, a * a, a @ b, a * a, a @ b, a @ b]):
        assert_near(got[i], want.double(), 1e-3, f"result {i}")
    assert mid["dealer_messages"] == 4  # one acknowledgement per prefetched repeat
    assert end["dealer_messages"] == 4 + 1  # the last matmul: a triple (left pending, decrypted)
    assert kinds_of([m for _, m in to_dealer]) == ["request*2", "announce*3", "ack*4", "request*1"]


# -- the announcement: chunks under the control-frame cap ------------------------------------------------
def many_requests(count: int) -> list[dict]:
    return [{"kind": "trunc", "params": {"bits": 16, "shape": [i % 700 + 1, 3]}} for i in range(count)] \
        + [{"kind": "btriple", "params": {"shape": [5]}}] * 7


def test_announcement_chunks_fit_the_frame_cap_and_round_trip():
    from mpc_ml.comm.frames import MAX_CONTROL_BYTES, encode_control

    requests = many_requests(3000)
    for repeats, window in ((1, 2), (12345, 17)):
        messages = dealer_mod.announcement(requests, repeats, window)
        sizes = spec_sizes(requests, repeats, window)
        assert len(messages) == sizes["announcement_messages"] >= 3
        assert all(len(encode_control(m)) <= CHUNK_BYTES < MAX_CONTROL_BYTES for m in messages)
        assert [m["more"] for m in messages] == [True] * (len(messages) - 1) + [False]
        total = sum(len(encode_control(m)) for m in messages)
        assert total == evaluate_table(SPEC["dealer"]["correction_party"], **sizes)["dealer_bytes_sent"]
        gathered = dealer_mod._Announced()
        for m in messages:
            assert not gathered.complete
            gathered.add(json.loads(encode_control(m)))
        assert gathered.complete and gathered.length == len(requests) == 3007
        assert (gathered.repeats, gathered.window) == (repeats, window)
        expanded = [compact(r) for count, r in gathered.runs for _ in range(count)]
        assert expanded == [compact(r) for r in requests]
        assert gathered.runs[-1][0] == 7  # consecutive equal requests: one entry with a count


def test_a_chunked_announcement_end_to_end(monkeypatch, to_dealer):
    monkeypatch.setattr(dealer_mod, "ANNOUNCE_CHUNK_BYTES", 400)
    torch_model = mlp()
    data = batches(REPEATS + 2)
    outs = mpc.run(infer_party, 2, args=(torch_model, data, True))
    requests = outs[1]["requests"]
    sizes = spec_sizes(requests, REPEATS, chunk_bytes=400,
                       run={k: outs[1]["stats"][0][k] for k in COUNTERS})
    assert sizes["announcement_messages"] > 2
    assert outs[1]["prefetch"] == expected(SPEC, 2, 1, sizes)
    assert kinds_of([m for _, m in to_dealer]) == [  # the warm-up query's requests, then the traced run's
        f"request*{2 * len(requests)}", f"announce*{sizes['announcement_messages']}",
        f"ack*{REPEATS}", f"request*{len(requests)}"]
    with torch.no_grad():
        for i, (x, _) in enumerate(data):
            assert_near(outs[0]["outs"][i], torch_model.double()(x.double()), TOL, f"run {i}")


# -- what the dealer refuses --------------------------------------------------------------------------------
BAD_ANNOUNCEMENTS = {
    "count 0": {"more": False, "prefetch": [[0, {"kind": "trunc", "params": {"bits": 16, "shape": [2]}}]],
                "repeats": 1, "window": 2},
    "unknown kind": {"more": False, "prefetch": [[1, {"kind": "nope", "params": {}}]], "repeats": 1,
                     "window": 2},
    "window 0": {"more": False, "prefetch": [[1, {"kind": "trunc", "params": {"bits": 16, "shape": [2]}}]],
                 "repeats": 1, "window": 0},
    "too many": {"more": False, "prefetch": [[1 << 21, {"kind": "trunc", "params": {"bits": 16,
                                                                                   "shape": [2]}}]],
                 "repeats": 1, "window": 2},
    "extra key": {"more": False, "prefetch": [], "repeats": 1, "window": 2, "x": 1},
    "stray ack": {"ack": 1},
}


def bad_announcement_party(msg: dict) -> None:
    provider = current().provider
    if provider.is_correction_party:
        provider.link.send(msg)
    enc(torch.ones(2), src=0).relu().decrypt()  # needs correlations: the dealer's answer


@pytest.mark.parametrize("name", sorted(BAD_ANNOUNCEMENTS))
def test_the_dealer_refuses_a_malformed_announcement(name):
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        mpc.run(bad_announcement_party, 2, args=(BAD_ANNOUNCEMENTS[name],),
                config=mpc.Config(comm_timeout_s=20))
    assert time.monotonic() - start < 15
    text = str(info.value)
    assert "the dealer failed" in text or "the dealer refused" in text, text
    assert ("announcement" in text or "acknowledgement" in text), text


def test_prefetch_checks_its_arguments():
    def party():
        errors = []
        for args in (("not a list", 1), ([{"kind": "nope", "params": {}}], 1), ([], -1),
                     ([], 1.5), ([], 1, 0), ([{"kind": "trunc", "params": {}}], 1, 65)):
            try:
                current().provider.prefetch(*args)
            except ValueError as e:
                errors.append(str(e))
        return errors

    for provider, count in (("dealer", 6), ("tfp", 5)):  # window 65: what a dealer refuses
        errors = mpc.run(party, 2, provider=provider)[0]
        assert len(errors) == count and all(e.startswith("prefetch: ") for e in errors), errors


# -- tfp: nothing to do ------------------------------------------------------------------------------------
def test_prefetch_is_a_no_op_under_tfp():
    torch_model = mlp()
    data = batches(REPEATS + 2)
    outs = mpc.run(infer_party, 2, provider="tfp", args=(torch_model, data, True))
    with torch.no_grad():
        for rank in range(2):
            for i, (x, _) in enumerate(data):
                assert_near(outs[rank]["outs"][i], torch_model.double()(x.double()), TOL, f"run {i}")
            assert outs[rank]["prefetch"] == dict.fromkeys(COUNTERS, 0)
            assert all(s == outs[rank]["stats"][0] for s in outs[rank]["stats"])
    # ... and a run that is not the traced one is not an error there
    assert mpc.run(diverging_party, 2, provider="tfp", args=(0,))[0][0] == []


# -- over tcp: leaving with prefetched corrections still on their way ----------------------------------
def leave_early_party() -> list:
    a = enc(torch.rand(16, 16, generator=gen(1)), src=0)
    with trace_correlations() as trace:
        (a @ a).decrypt()
    trace.prefetch(6, window=3)
    return [(a @ a).decrypt() for _ in range(2)]  # 4 runs' correlations never used


@pytest.mark.parametrize("n", [2, 3])
def test_parties_may_leave_before_using_every_prefetched_run_over_tcp(n):
    a = torch.rand(16, 16, generator=gen(1)).double()
    outs = mpc.run(leave_early_party, n, backend="tcp", provider="dealer")
    for rank in range(n):
        for got in outs[rank]:
            assert_near(got, a @ a, 1e-3, f"party {rank}: a @ a")
