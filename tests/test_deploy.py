"""Deployment files and the multi-host recipes: ssh (a real sshd on loopback), slurm
(the generated commands, run here), and parties on separate hosts (network namespaces
joined by a bridge), over TLS, then with bandwidth shaped by tc tbf."""
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import NETNS_PREFIX, PROVIDERS, free_addresses, sh
from mpc_ml.launch import deploy

PARTY_SCRIPT = textwrap.dedent('''
    """Private inference: party 0 owns an MLP, party 1 the input; party 1 writes the result."""
    import sys
    import torch
    import mpc_ml as mpc
    from mpc_ml.serving import private_predict

    out_path = sys.argv[1]
    mpc.init()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.linspace(-1, 1, 12).reshape(2, 6)
    private = mpc.nn.from_pytorch(model, x)
    got = private_predict(private, x if mpc.rank() == 1 else None, model_owner=0, data_owner=1,
                          input_shape=(2, 6))
    if got is not None:
        expected = model(x).detach()
        open(out_path, "w").write(f"{(got - expected).abs().max().item()}\\n")
''')


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def check_result(out: Path) -> None:
    assert out.exists(), "the data owner wrote no result"
    assert float(out.read_text()) < 1e-2


# -- the file format -------------------------------------------------------------------------
def test_load_and_commands(tmp_path):
    cfg = write(tmp_path / "job.toml", """
        [job]
        provider = "dealer"
        tls = "certs"
        precision_bits = 20
        [[party]]
        address = "10.0.0.1:29500"
        ssh = "alice@10.0.0.1"
        python = "/opt/venv/bin/python"
        [[party]]
        address = "10.0.0.2:29500"
        netns = "blue"
        [dealer]
        address = "10.0.0.9:29600"
    """)
    job = deploy.load(cfg)
    assert job.world_size == 2 and job.provider == "dealer"
    env = job.party_env(1)
    assert env["MPC_RANK"] == "1" and env["MPC_WORLD_SIZE"] == "2"
    assert env["MPC_PARTY_ADDRS"] == "10.0.0.1:29500,10.0.0.2:29500"
    assert env["MPC_DEALER_ADDR"] == "10.0.0.9:29600" and env["MPC_PRECISION_BITS"] == "20"
    assert env["MPC_TLS_DIR"] == str((tmp_path / "certs").resolve())
    commands = job.commands("/srv/train.py", ["--epochs", "2"])
    assert list(commands) == ["dealer", "party 0", "party 1"]
    ssh = commands["party 0"]
    assert ssh[0] == "ssh" and ssh[-2] == "alice@10.0.0.1"
    remote = shlex.split(ssh[-1])  # one string for the remote shell
    assert remote[0] == "env" and "MPC_RANK=0" in remote
    assert remote[-4:] == ["/opt/venv/bin/python", "/srv/train.py", "--epochs", "2"]
    assert commands["party 1"][:4] == ["ip", "netns", "exec", "blue"]
    dealer = commands["dealer"]
    assert dealer[dealer.index("--listen") + 1] == "10.0.0.9:29600"
    assert dealer[dealer.index("--tls") + 1] == str((tmp_path / "certs").resolve())
    assert "MPC_PRECISION_BITS=20" in dealer


@pytest.mark.parametrize("text, message", [
    ("[[party]]\naddress = '1.2.3.4:1'\n", "at least two"),
    ("[[party]]\naddress = 'a:1'\n[[party]]\naddress = 'a:1'\n", "share an address"),
    ("[[party]]\nhost = 'a'\n[[party]]\naddress = 'b:1'\n", "unknown keys"),
    ("[[party]]\nssh = 'a'\n[[party]]\naddress = 'b:1'\n", "needs an address"),
    ("[[party]]\naddress = 'nope'\n[[party]]\naddress = 'b:1'\n", "not HOST:PORT"),
    ("[job]\nprovider = 'oracle'\n", "unknown provider"),
    ("[job]\nprovider = 'dealer'\n[[party]]\naddress = 'a:1'\n[[party]]\naddress = 'b:1'\n",
     "needs a \\[dealer\\]"),
    ("[job]\nspeed = 3\n", "unknown \\[job\\] keys"),
    ("[job]\nprecision_bits = 99\n[[party]]\naddress = 'a:1'\n[[party]]\naddress = 'b:1'\n",
     "precision_bits"),
    ("[[party]\n", "not valid TOML"),
    ("[cluster]\n", "unknown sections"),
])
def test_bad_files_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        deploy.load(write(tmp_path / "bad.toml", text))


def local_job(tmp_path, provider="tfp", extra="") -> Path:
    addrs = free_addresses(3)
    parties = "".join(f'[[party]]\naddress = "{a}"\n{extra}\n' for a in addrs[:2])
    dealer = f'[dealer]\naddress = "{addrs[2]}"\n' if provider == "dealer" else ""
    return write(tmp_path / "job.toml",
                 f'[job]\nprovider = "{provider}"\ncomm_timeout_s = 20\n{parties}{dealer}')


@pytest.mark.parametrize("provider", PROVIDERS)
def test_run_processes_locally(tmp_path, provider):
    script = write(tmp_path / "party.py", PARTY_SCRIPT)
    job = deploy.load(local_job(tmp_path, provider))
    out = tmp_path / "result.txt"
    assert deploy.run_processes(job.commands(str(script), [str(out)]), grace_s=20) == 0
    check_result(out)


def test_failing_party_is_named(tmp_path, capfd):
    script = write(tmp_path / "party.py", """
        import mpc_ml as mpc
        mpc.init()
        if mpc.rank() == 1:
            raise SystemExit(7)
        mpc.encrypt(None, src=1, shape=(1,)).decrypt()
    """)
    job = deploy.load(local_job(tmp_path, "dealer"))
    code = deploy.run_processes(job.commands(str(script), []), grace_s=20)
    assert code == 7
    assert "party 1 exited with code 7" in capfd.readouterr().err


# -- slurm: the generated commands, run here -------------------------------------------------
def test_slurm_script_commands_run(tmp_path):
    script = write(tmp_path / "party.py", PARTY_SCRIPT)
    job = deploy.load(local_job(tmp_path, "dealer"))
    out = tmp_path / "result.txt"
    sbatch = deploy.slurm_script(job, str(script), [str(out)])
    assert sbatch.startswith("#!/bin/bash") and "#SBATCH --ntasks=3" in sbatch
    steps = [line for line in sbatch.splitlines() if line.startswith("srun ")]
    assert len(steps) == 3 and all("--nodelist=127.0.0.1" in s for s in steps)
    # each step without its srun prefix is the command a node runs: run them all here
    local = "\n".join(re.sub(r"^srun .*?--nodelist=\S+ ", "", line) for line in sbatch.splitlines())
    runnable = write(tmp_path / "job.sh", local)
    subprocess.run(["bash", str(runnable)], check=True, timeout=120)
    check_result(out)


# -- ssh: a throwaway sshd on a loopback port ------------------------------------------------
@pytest.fixture
def sshd(tmp_path):
    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                       check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = int(free_addresses(1)[0].rsplit(":", 1)[1])
    Path("/run/sshd").mkdir(exist_ok=True)
    config = write(keys / "sshd_config", f"""
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {keys / 'host'}
        AuthorizedKeysFile {keys / 'authorized_keys'}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        StrictModes no
        UsePAM no
        PidFile {keys / 'sshd.pid'}
    """)
    server = subprocess.Popen([exe, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE,
                              text=True)
    log = []
    for line in server.stderr:  # ready once it says it listens (or it exits: EOF)
        log.append(line)
        if "Server listening" in line:
            break
    else:
        raise RuntimeError(f"sshd exited: {''.join(log)}")
    yield port, keys
    server.terminate()
    server.wait(10)


def test_parties_started_over_ssh(tmp_path, sshd):
    port, keys = sshd
    script = write(tmp_path / "party.py", PARTY_SCRIPT)
    extra = (f'ssh = "root@127.0.0.1"\nssh_port = {port}\nssh_key = "{keys / "client"}"\n'
             f'ssh_options = ["UserKnownHostsFile={keys / "known_hosts"}"]\n')
    job = deploy.load(local_job(tmp_path, "tfp", extra))
    assert all(cmd[0] == "ssh" for cmd in job.commands(str(script), []).values())
    out = tmp_path / "result.txt"
    assert deploy.run_processes(job.commands(str(script), [str(out)]), grace_s=20) == 0
    check_result(out)


# -- separate hosts: network namespaces (the `hosts` fixture), TLS, shaped bandwidth ----------


def test_private_inference_across_namespaces_with_tls(tmp_path, hosts):
    from mpc_ml.comm.tls import make_certificates

    make_certificates(tmp_path / "certs", parties=2, dealer=True)
    script = write(tmp_path / "party.py", PARTY_SCRIPT)
    parties = "".join(f'[[party]]\naddress = "{ip}:29500"\nnetns = "{NETNS_PREFIX}{i}"\n'
                      for i, ip in enumerate(hosts[:2]))
    cfg = write(tmp_path / "job.toml", f'[job]\nprovider = "dealer"\ntls = "certs"\n'
                f'comm_timeout_s = 30\n{parties}'
                f'[dealer]\naddress = "{hosts[2]}:29600"\nnetns = "{NETNS_PREFIX}2"\n')
    job = deploy.load(cfg)
    for shaped in (False, True):
        if shaped:  # every host's link limited to 50 Mbit/s
            for i in range(3):
                sh("tc", "qdisc", "add", "dev", f"{NETNS_PREFIX}v{i}", "root", "tbf", "rate", "50mbit",
                   "burst", "64kb", "latency", "100ms")
        out = tmp_path / f"result-{shaped}.txt"
        assert deploy.run_processes(job.commands(str(script), [str(out)]), grace_s=30) == 0
        check_result(out)
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", f"{NETNS_PREFIX}v0"], capture_output=True,
                           text=True).stdout
    assert "tbf" in qdisc and "50Mbit" in qdisc
