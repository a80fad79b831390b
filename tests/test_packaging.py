"""The wheel carries what an installed mpc_ml needs: every protocol spec and py.typed."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import pathlib, sys
import mpc_ml
from mpc_ml.core.specs import load_spec, protocols_dir
here = pathlib.Path(mpc_ml.__file__).resolve().parent
assert str(here).startswith(sys.prefix), (here, sys.prefix)
names = sorted(p.stem for p in protocols_dir().glob("*.toml"))
assert all(load_spec(n)["name"] == n for n in names)
assert (here / "py.typed").is_file()
print(len(names))
"""


def test_a_wheel_installed_in_a_fresh_venv_loads_every_spec(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(wheels)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("mpc_ml-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                    str(wheel)], check=True)
    # torch and friends from this environment, after the wheel's own site-packages
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPC_PROTOCOLS_DIR")}
    out = subprocess.run([python, "-c", CHECK], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert int(out.stdout) == len(list((ROOT / "protocols").glob("*.toml"))) >= 12
