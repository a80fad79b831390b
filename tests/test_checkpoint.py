"""Checkpoints that lose nothing (mpc_ml/nn/checkpoint.py): resuming a private training
run, and refusing every checkpoint that does not belong to this session.

The tests train a small MLP privately (2 parties, SGD with momentum, 4 batches per epoch)
and compare an unbroken 4-epoch run with 2 epochs + save_shares + a fresh mpc.run that
load_shares and trains 2 more. The two are not bit-identical, and cannot be: a fresh
session draws fresh masks and truncation pairs, and exact truncation rounds each product
up or down by one unit in the last place (2^-16) depending on them. Two *unbroken* runs
differ the same way (about 1e-4 after 16 steps here), so the resumed run is held to 1e-3
of the unbroken one, while skipping the checkpoint's momentum buffers moves the result by
about 2e-2: the resume is exact up to the rounding noise.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import mpc_ml as mpc
from mpc_ml.config import Config
from mpc_ml.nn.checkpoint import CheckpointError

FAST = mpc.Config(comm_timeout_s=15.0, connect_timeout_s=15.0)
EPOCHS, BATCH, SAMPLES = 4, 8, 32
LR, MOMENTUM = 0.1, 0.5
RESUME_TOL = 1e-3


# -- a small private training run (module level: the tcp backend pickles it) ---------------
def _data():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (SAMPLES,), generator=g)
    x = torch.randn(SAMPLES, 4, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1)
    return x, F.one_hot(y, 2).float()


def _initial_state():
    # Built here, not in the parties: inproc parties are threads sharing torch's global RNG.
    g = torch.Generator().manual_seed(3)
    return {"0.weight": torch.randn(8, 4, generator=g) * 0.5, "0.bias": torch.zeros(8),
            "2.weight": torch.randn(2, 8, generator=g) * 0.5, "2.bias": torch.zeros(2)}


def _model():
    return mpc.nn.Sequential(mpc.nn.Linear(4, 8), mpc.nn.ReLU(), mpc.nn.Linear(8, 2))


def train_party(path=None, start=0, stop=EPOCHS, save=False, die_after=None,
                restore_optimizer=True):
    """Train epochs [start, stop); resume from path if start > 0; save after each epoch
    if asked. Party 1 vanishes (os._exit) right after saving epoch die_after."""
    model = _model()
    model.load_state_dict(_initial_state())
    model.encrypt(src=0)
    opt = mpc.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    if start:
        model.load_shares(path, optimizer=opt if restore_optimizer else None)
    x, y = _data()
    owner = mpc.rank() == 1  # the data owner
    for epoch in range(start, stop):
        for i in range(0, SAMPLES, BATCH):
            xb = mpc.encrypt(x[i:i + BATCH] if owner else None, src=1, shape=(BATCH, 4))
            yb = mpc.encrypt(y[i:i + BATCH] if owner else None, src=1, shape=(BATCH, 2))
            opt.zero_grad()
            mpc.nn.CrossEntropyLoss()(model(xb), yb).backward()
            opt.step()
        if save:
            model.save_shares(path, optimizer=opt)
        if die_after == epoch + 1 and mpc.rank() == 1:
            os._exit(1)  # killed between epochs: no exception, no goodbye
    model.decrypt()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def unbroken():
    return mpc.run(train_party, world_size=2)[0]


# -- resuming -----------------------------------------------------------------------------------
def test_resume_matches_unbroken_run(tmp_path, unbroken):
    path = str(tmp_path / "mlp-{rank}.mpc")
    halfway = mpc.run(train_party, world_size=2, kwargs=dict(stop=2, save=True, path=path))[0]
    assert sorted(os.listdir(tmp_path)) == ["mlp-0.mpc", "mlp-1.mpc"]
    loaded = mpc.run(load_party, world_size=2, args=(path,))[0]
    assert all(torch.equal(loaded[k], halfway[k]) for k in halfway)  # the same shares, exactly
    resumed = mpc.run(train_party, world_size=2, kwargs=dict(start=2, path=path))[0]
    assert _max_diff(resumed, unbroken) < RESUME_TOL
    assert _max_diff(halfway, unbroken) > 50 * RESUME_TOL  # epochs 3-4 did move the weights
    # The momentum buffers travel with the checkpoint: without them the run drifts away.
    forgetful = mpc.run(train_party, world_size=2,
                        kwargs=dict(start=2, path=path, restore_optimizer=False))[0]
    assert _max_diff(forgetful, unbroken) > 10 * RESUME_TOL


def test_run_killed_between_epochs_resumes_from_its_checkpoint(tmp_path, unbroken):
    path = str(tmp_path / "mlp-{rank}.mpc")
    with pytest.raises(mpc.PartyError, match="party 1 failed with ProcessDied"):
        mpc.run(train_party, world_size=2, backend="tcp", config=FAST,
                kwargs=dict(save=True, path=path, die_after=2))
    # Party 0 got into epoch 3 and failed there: its epoch-2 file is the last one it wrote.
    # Resume in threads: the files do not depend on the backend that wrote them.
    resumed = mpc.run(train_party, world_size=2, kwargs=dict(start=2, path=path))[0]
    assert _max_diff(resumed, unbroken) < RESUME_TOL


# -- refusing checkpoints -----------------------------------------------------------------------
def save_party(path, scale=1.0):
    model = _model()
    model.load_state_dict({k: v * scale for k, v in _initial_state().items()})
    model.encrypt(src=0)
    opt = mpc.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return model.save_shares(path, optimizer=opt)


def load_party(path, model_factory=_model, optimizer="SGD"):
    """Try to load; every party returns its error message (or the decrypted weights)."""
    model = model_factory()
    model.encrypt(src=0)
    opt = getattr(mpc.optim, optimizer)(model.parameters(), lr=LR)
    try:
        model.load_shares(path, optimizer=opt)
    except CheckpointError as e:
        return str(e)
    model.decrypt()
    return dict(model.state_dict())


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of 3 parties, and one of another run (other weights, fresh shares)."""
    first, other = str(tmp_path / "a-{rank}.mpc"), str(tmp_path / "b-{rank}.mpc")
    files = mpc.run(save_party, world_size=3, args=(first,))
    mpc.run(save_party, world_size=3, args=(other, 2.0))
    return first, other, files


def test_checkpoint_round_trip_without_pickle(saved):
    first, _, files = saved
    for rank, f in enumerate(files):
        assert open(f, "rb").read(8) == b"MPCSHARE"  # magic, then a JSON header: no pickle
        header = _header(f)
        assert header["rank"] == rank and header["world_size"] == 3
        assert header["precision_bits"] == 16
        assert {e["name"] for e in header["entries"]} == set(_initial_state())
        assert all(e["kind"] == "share" for e in header["entries"])
        assert header["party_sha256"][rank] == header["content_sha256"]
    digests = {_header(f)["checkpoint_sha256"] for f in files}
    assert len(digests) == 1  # the agreed checkpoint digest is in every party's file
    got = mpc.run(load_party, world_size=3, args=(first,))
    for weights in got:
        assert _max_diff(weights, _initial_state()) < 2 ** -15


def _batch_norm_model():
    return mpc.nn.Sequential(mpc.nn.Linear(4, 3), mpc.nn.BatchNorm1d(3))


def buffers_party(path, save):
    model = _batch_norm_model()
    if save:
        model[1].num_batches_tracked.fill_(7)
        model[1].running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.encrypt(src=0)
        model.save_shares(path)
        model.decrypt()
        return dict(model.state_dict())
    model.load_shares(path)  # a plaintext model becomes private
    kinds = {k: (type(v).__name__, getattr(v, "requires_grad", None))
             for k, v in model.state_dict().items()}
    model.decrypt()
    return dict(model.state_dict()), kinds


def test_plaintext_model_loads_shares_and_public_buffers(tmp_path):
    path = str(tmp_path / "bn-{rank}.mpc")
    saved = mpc.run(buffers_party, world_size=2, args=(path, True))[0]
    state, kinds = mpc.run(buffers_party, world_size=2, args=(path, False))[0]
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert int(state["1.num_batches_tracked"]) == 7
    assert kinds["1.num_batches_tracked"][0] == "Tensor"  # public, as encrypt() leaves it
    assert kinds["0.weight"] == ("MPCTensor", True) and kinds["1.bias"] == ("MPCTensor", True)
    assert kinds["1.running_mean"] == ("MPCTensor", False)


def _header(f):
    raw = open(f, "rb").read()
    return json.loads(raw[16:16 + int.from_bytes(raw[8:16], "little")])


def test_checkpoint_from_another_run_is_refused(saved, tmp_path):
    first, other, files = saved
    mixed = str(tmp_path / "mixed-{rank}.mpc")
    for rank in range(3):
        source = (other if rank == 2 else first).replace("{rank}", str(rank))
        os.link(source, mixed.replace("{rank}", str(rank)))
    errors = mpc.run(load_party, world_size=3, args=(mixed,))
    for rank, message in enumerate(errors):
        assert isinstance(message, str), f"party {rank} loaded a mixed checkpoint"
        assert f"party {rank}: the parties load files of different checkpoints" in message
        assert "party 2's checkpoint" in message and "parties [0, 1]" in message


def test_two_parties_with_different_checkpoints_are_both_named(tmp_path):
    a, b = str(tmp_path / "a-{rank}.mpc"), str(tmp_path / "b-{rank}.mpc")
    mpc.run(save_party, world_size=2, args=(a,))
    mpc.run(save_party, world_size=2, args=(b,))
    os.replace(b.replace("{rank}", "1"), a.replace("{rank}", "1"))
    errors = mpc.run(load_party, world_size=2, args=(a,))
    for message in errors:
        assert "parties [0] hold checkpoint" in message and "parties [1] hold checkpoint" in message


def _flip_payload_byte(f):
    raw = bytearray(open(f, "rb").read())
    raw[-3] ^= 0x01  # the lowest bit of a share: one unit in the last place
    open(f, "wb").write(raw)


def _edit_header(f):
    raw = open(f, "rb").read()
    assert raw.count(b'"precision_bits":16') == 1
    open(f, "wb").write(raw.replace(b'"precision_bits":16', b'"precision_bits":17'))


def _edit_digest(f):
    raw = open(f, "rb").read()
    at = raw.index(b'"checkpoint_sha256":"') + len(b'"checkpoint_sha256":"')
    open(f, "wb").write(raw[:at] + (b"0" if raw[at:at + 1] != b"0" else b"1") + raw[at + 1:])


def _truncate(f):
    raw = open(f, "rb").read()
    open(f, "wb").write(raw[:-100])


def _garbage(f):
    open(f, "wb").write(b"\x80\x04\x95 not a checkpoint, and never unpickled")


@pytest.mark.parametrize("damage, reason", [
    (_flip_payload_byte, "checksum mismatch: the file is corrupted or was modified"),
    (_edit_header, "checksum mismatch"),
    (_edit_digest, "the agreed digests in the header are inconsistent"),
    (_truncate, "truncated"),
    (_garbage, "bad magic"),
    (os.unlink, "no checkpoint file"),
], ids=["payload-bit", "header-edit", "digest-edit", "truncated", "garbage", "missing"])
def test_damaged_file_is_refused_by_every_party(saved, damage, reason):
    first, _, files = saved
    damage(files[1])
    errors = mpc.run(load_party, world_size=3, args=(first,))
    for rank, message in enumerate(errors):
        assert isinstance(message, str), f"party {rank} loaded a damaged checkpoint"
        assert f"party {rank}: cannot load the checkpoint: party 1 refused" in message
        assert reason in message and files[1] in message


def test_other_world_size_precision_or_rank_is_refused(tmp_path):
    path = str(tmp_path / "w2-{rank}.mpc")
    mpc.run(save_party, world_size=2, args=(path,))
    errors = mpc.run(load_party, world_size=3, args=(path,))
    for message in errors:
        assert "party 0, party 1, party 2 refused" in message
        assert "saved with world_size=2, this session runs with world_size=3" in message
        assert "party 2: no checkpoint file" in message
    errors = mpc.run(load_party, world_size=2, args=(path,),
                     config=Config(precision_bits=20))
    for message in errors:
        assert "saved with precision_bits=16, this session runs with precision_bits=20" in message
    swapped = str(tmp_path / "swapped-{rank}.mpc")
    for rank in range(2):
        os.link(path.replace("{rank}", str(1 - rank)), swapped.replace("{rank}", str(rank)))
    errors = mpc.run(load_party, world_size=2, args=(swapped,))
    assert "saved with rank=1, this session runs with rank=0" in errors[0]


def _wider_model():
    return mpc.nn.Sequential(mpc.nn.Linear(4, 16), mpc.nn.ReLU(), mpc.nn.Linear(16, 2))


def _deeper_model():
    return mpc.nn.Sequential(mpc.nn.Linear(4, 8), mpc.nn.ReLU(), mpc.nn.Linear(8, 2),
                             mpc.nn.Linear(2, 2))


def test_checkpoint_of_another_model_or_optimizer_is_refused(saved):
    first, _, _ = saved
    errors = mpc.run(load_party, world_size=3, args=(first, _wider_model))
    assert all("0.weight has shape (8, 4) in the checkpoint, the model expects (16, 4)" in m
               for m in errors)
    errors = mpc.run(load_party, world_size=3, args=(first, _deeper_model))
    assert all("missing keys ['3.weight', '3.bias']" in m for m in errors)
    errors = mpc.run(load_party, world_size=3, args=(first, _model, "Adam"))
    assert all("holds SGD state, the optimizer is Adam" in m for m in errors)


def shared_path_party(path):
    try:
        save_party(path)
    except CheckpointError as e:
        return str(e)


def test_parties_writing_one_path_are_told(tmp_path):
    errors = mpc.run(shared_path_party, world_size=2, args=(str(tmp_path / "same.mpc"),))
    for message in errors:
        assert "was overwritten by party" in message and "'{rank}'" in message


def adam_party(path, load):
    """One Adam step and a save, or a load: the model and optimizer state, decrypted."""
    model = _model()
    model.load_state_dict(_initial_state())
    model.encrypt(src=0)
    opt = mpc.optim.Adam(model.parameters(), lr=0.01)
    if load:
        model.load_shares(path, optimizer=opt)
    else:
        x, y = _data()
        xb = mpc.encrypt(x[:BATCH] if mpc.rank() == 1 else None, src=1, shape=(BATCH, 4))
        yb = mpc.encrypt(y[:BATCH] if mpc.rank() == 1 else None, src=1, shape=(BATCH, 2))
        mpc.nn.CrossEntropyLoss()(model(xb), yb).backward()
        opt.step()
        model.save_shares(path, optimizer=opt)
    state = {name: {k: v.decrypt() for k, v in opt.state[id(p)].items()}
             for name, p in model.named_parameters()}
    model.decrypt()
    return dict(model.state_dict()), state, opt.steps


def test_adam_state_survives_a_checkpoint_exactly(tmp_path):
    """The loaded shares are the saved ones, so what they decrypt to is bit-identical."""
    path = str(tmp_path / "adam-{rank}.mpc")
    weights, state, steps = mpc.run(adam_party, world_size=2, args=(path, False))[0]
    got_weights, got_state, got_steps = mpc.run(adam_party, world_size=2, args=(path, True))[0]
    assert steps == got_steps == 1
    assert all(torch.equal(weights[k], got_weights[k]) for k in weights)
    assert state.keys() == got_state.keys()
    for name in state:
        assert set(state[name]) == set(got_state[name]) and len(state[name]) >= 2  # moments
        assert all(torch.equal(state[name][k], got_state[name][k]) for k in state[name])
