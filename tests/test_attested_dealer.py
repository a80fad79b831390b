"""The attested dealer: parties verify its quote (signature, debug bit, measurement, the
attested key, their nonces) before using any correlation, and refuse naming what differed."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

import mpc_ml as mpc
from mpc_ml.comm import DEALER_RANK
from mpc_ml.comm.inproc import InprocLink
from mpc_ml.providers import attestation, dealer
from mpc_ml.providers.attestation import sim_measurement


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (mpc.encrypt(a, src=0) * mpc.encrypt(b, src=1)).decrypt()


A, B = torch.tensor([1.5, -2.0, 0.25]), torch.tensor([2.0, 3.0, -4.0])
SIM = mpc.Config(dealer_attest="sim", dealer_measurement=sim_measurement())


@pytest.mark.parametrize("backend", ["inproc", "tcp"])
def test_parties_compute_with_a_dealer_that_attests_the_pinned_measurement(backend, capfd):
    outs = mpc.run(_product, 2, backend=backend, args=(A, B), config=SIM)
    assert all(torch.allclose(o, A * B) for o in outs)
    err = capfd.readouterr().err
    assert err.count("protects nothing") == 3, err  # the dealer and both parties say so


def _refusal(config: mpc.Config, n: int = 2) -> str:
    with pytest.raises(mpc.PartyError) as e:
        mpc.run(_product, n, args=(A, B), config=config)
    return str(e.value)


def test_a_dealer_with_another_measurement_is_refused():
    text = _refusal(SIM.replace(dealer_measurement="ab" * 32))
    assert "AttestationError" in text and "measurement" in text and sim_measurement() in text


def test_a_party_that_pins_a_measurement_refuses_a_dealer_that_does_not_attest():
    text = _refusal(mpc.Config(dealer_measurement=sim_measurement()))
    assert "does not attest" in text and "measurement" in text


def _patch_quote(monkeypatch, make):
    real = attestation.make_dealer_quote

    def patched(mode, report_data, **kw):
        return make(real, mode, report_data, **kw)

    monkeypatch.setattr(attestation, "make_dealer_quote", patched)


def test_a_debug_enclave_is_refused(monkeypatch):
    _patch_quote(monkeypatch, lambda real, mode, rd, **kw: dealer.sim_platform().make_quote(
        rd, debug=True))
    assert "debug" in _refusal(SIM)


def test_a_quote_of_another_key_is_refused(monkeypatch):
    from mpc_ml.core.keys import KeyAgreement

    def other_key(real, mode, report_data, **kw):  # the quote names a key the parties never saw
        return real(mode, hashlib.sha256(KeyAgreement().public).digest() + report_data[32:], **kw)

    _patch_quote(monkeypatch, other_key)
    text = _refusal(SIM)
    assert "attestation" in text and "key" in text, text


def test_a_replayed_quote_is_refused(monkeypatch):
    """A quote from an earlier session (other nonces) sent again in a new one."""
    recorded: list[dict] = []
    replaying = []
    real_send = InprocLink.send

    def send(self, msg):
        if isinstance(msg, dict) and "quote" in msg:
            if replaying:
                msg = recorded[0]
            elif not recorded:
                recorded.append(dict(msg))
        return real_send(self, msg)

    monkeypatch.setattr(InprocLink, "send", send)
    mpc.run(_product, 2, args=(A, B), config=SIM)  # the first session: its quote is kept
    replaying.append(True)
    text = _refusal(SIM)
    assert "nonce" in text and "attestation" in text


def test_a_re_signed_quote_is_refused(monkeypatch):
    _patch_quote(monkeypatch, lambda real, mode, rd, **kw: attestation.SimPlatform(
        seed=b"another platform").make_quote(rd))
    assert "attestation" in _refusal(SIM)


def test_a_truncated_quote_is_refused(monkeypatch):
    _patch_quote(monkeypatch, lambda real, mode, rd, **kw: real(mode, rd, **kw)[:500])
    assert "attestation" in _refusal(SIM)


def test_the_dealer_never_receives_anything_derived_from_an_input(monkeypatch):
    """Every byte the dealer receives, for two inputs of one shape: the same requests."""
    received: list[bytes] = []
    real_send = InprocLink.send

    def recording(self, msg):
        if self.peer == DEALER_RANK and not (isinstance(msg, dict) and "x25519" in msg):
            received.append(msg.numpy().tobytes() if isinstance(msg, torch.Tensor)
                            else json.dumps(msg, sort_keys=True).encode())
        return real_send(self, msg)

    monkeypatch.setattr(InprocLink, "send", recording)

    def step(a, b):
        x, y = mpc.encrypt(a, src=0), mpc.encrypt(b, src=1)
        return (x @ y.t()).relu().sigmoid().decrypt()

    mpc.run(step, 3, args=(torch.randn(4, 5), torch.randn(6, 5)), config=SIM)
    first, received[:] = list(received), []
    mpc.run(step, 3, args=(torch.randn(4, 5) * 50, torch.randn(6, 5)), config=SIM)
    assert len(first) > 10 and received == first


def test_mpc_ml_dealer_prints_its_measurement_first():
    proc = subprocess.Popen([sys.executable, "-m", "mpc_ml", "dealer", "--listen", "127.0.0.1:0",
                             "-n", "2", "--attest", "sim"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.communicate()
    assert first == f"dealer measurement: {sim_measurement()}"


TRAIN_SCRIPT = '''
"""Two SGD steps of a linear model: party 0 owns the weights, party 1 the data; party 1
writes the trained weights' distance to the same training in plaintext."""
import sys
import torch
import mpc_ml as mpc

mpc.init()
torch.manual_seed(0)
net = torch.nn.Linear(4, 1)
x, y = torch.randn(16, 4), torch.randn(16, 1)
model = mpc.nn.from_pytorch(net, x)
model.encrypt(src=0)
px = mpc.encrypt(x if mpc.rank() == 1 else None, src=1, shape=x.shape)
py = mpc.encrypt(y if mpc.rank() == 1 else None, src=1, shape=y.shape)
opt = mpc.optim.SGD(model.parameters(), lr=0.1)
popt = torch.optim.SGD(net.parameters(), lr=0.1)
for _ in range(2):
    opt.zero_grad()
    mpc.nn.MSELoss()(model(px), py).backward()
    opt.step()
    popt.zero_grad()
    torch.nn.functional.mse_loss(net(x), y).backward()
    popt.step()
model.decrypt()
if mpc.rank() == 1:
    state = model.state_dict()
    err = max(float((state[k] - v).abs().max()) for k, v in net.state_dict().items())
    open(sys.argv[1], "w").write(str(err))
'''


def test_private_training_with_an_attested_dealer_over_tls_across_namespaces(tmp_path, hosts):
    """Parties and the dealer on three hosts (network namespaces), every link TLS, the
    dealer attesting (sim) the measurement the parties pin."""
    from helpers import NETNS_PREFIX
    from mpc_ml.comm.tls import make_certificates
    from mpc_ml.launch import deploy

    make_certificates(tmp_path / "certs", parties=2, dealer=True)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    parties = "".join(f'[[party]]\naddress = "{ip}:29500"\nnetns = "{NETNS_PREFIX}{i}"\n'
                      for i, ip in enumerate(hosts[:2]))
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'[job]\nprovider = "dealer"\ntls = "certs"\ncomm_timeout_s = 30\n'
                   f'dealer_measurement = ["{"00" * 32}", "{sim_measurement()}"]\n{parties}'
                   f'[dealer]\naddress = "{hosts[2]}:29600"\nnetns = "{NETNS_PREFIX}2"\n'
                   'attest = "sim"\n')
    job = deploy.load(cfg)
    out = tmp_path / "err.txt"
    assert deploy.run_processes(job.commands(str(script), [str(out)]), grace_s=30) == 0
    assert float(out.read_text()) < 1e-2
    # a pinned measurement the dealer does not have: every party refuses before any correlation
    cfg.write_text(cfg.read_text().replace(sim_measurement(), "11" * 32))
    job = deploy.load(cfg)
    assert deploy.run_processes(job.commands(str(script), [str(out) + ".2"]), grace_s=30) != 0
    assert not (tmp_path / "err.txt.2").exists()


def test_the_sgx_path_relays_the_collateral_and_trusts_only_intels_root(monkeypatch):
    """A dealer in sgx mode (its quote from a stand-in platform here: there is no SGX) sends
    the quote's collateral along; the parties check the chain against Intel's root and refuse
    the stand-in, so the refusal is about the chain, not a missing collateral."""
    platform = attestation.SimPlatform(seed=b"not intel")
    monkeypatch.setattr(attestation, "make_dealer_quote",
                        lambda mode, rd, **kw: platform.make_quote(rd))
    monkeypatch.setattr(attestation, "fetch_collateral", lambda quote, *a: platform.collateral_json())
    text = _refusal(mpc.Config(dealer_attest="sgx", dealer_measurement=sim_measurement()))
    assert "attestation" in text and "Intel's root" in text, text
