"""`crypten.cfg`: CrypTen 0.4.1's configuration keys, mapped onto mpc_ml's Config.

Keys with an mpc_ml equivalent change it (encoder.precision_bits, mpc.provider,
debug.validation_mode). The functions.* knobs choose CrypTen's approximation methods;
mpc_ml has one method per function with a stated error (docs/functions.md), so reading
them gives CrypTen's defaults and setting one to another value is refused by name.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ...config import Config

# CrypTen 0.4.1's configs/default.yaml, flattened.
CRYPTEN_DEFAULTS: dict[str, Any] = {
    "communicator.verbose": False,
    "debug.debug_mode": False,
    "debug.validation_mode": False,
    "encoder.precision_bits": 16,
    "functions.max_method": "log_reduction",
    "functions.sigmoid_tanh_method": "reciprocal",
    "functions.sigmoid_tanh_terms": 32,
    "functions.exp_iterations": 8,
    "functions.reciprocal_method": "NR",
    "functions.reciprocal_nr_iters": 10,
    "functions.reciprocal_log_iters": 1,
    "functions.reciprocal_all_pos": False,
    "functions.reciprocal_initial": None,
    "functions.sqrt_nr_iters": 3,
    "functions.sqrt_nr_initial": None,
    "functions.log_iterations": 2,
    "functions.log_exp_iterations": 8,
    "functions.log_order": 8,
    "functions.trig_iterations": 10,
    "functions.erf_iterations": 8,
    "mpc.active_security": False,
    "mpc.provider": "TTP",
    "mpc.protocol": "beaver",
    "nn.dpsmpc.protocol": "layer_estimation",
    "nn.dpsmpc.skip_loss_forward": True,
    "nn.dpsmpc.cache_pred_size": True,
}
"""mpc.provider defaults to TTP (mpc_ml's dealer) where CrypTen's is TFP: mpc_ml's safe
default. Setting "TFP" explicitly gives party 0 every correlation, as in CrypTen."""

PROVIDERS = {"TTP": "dealer", "TFP": "tfp"}
# Keys that only change what CrypTen prints or checks; any value is accepted.
FREE = {"communicator.verbose", "debug.debug_mode", "nn.dpsmpc.skip_loss_forward",
        "nn.dpsmpc.cache_pred_size"}


class CrypTenConfig:
    """The flattened keys, readable and settable as cfg.encoder.precision_bits or
    cfg["encoder.precision_bits"]; `locked` while parties run (mpc_ml fixes a session's
    settings at its start)."""

    def __init__(self):
        object.__setattr__(self, "_values", dict(CRYPTEN_DEFAULTS))
        object.__setattr__(self, "locked", False)

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(f"crypten.cfg has no key {key!r}")
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._values:
            raise KeyError(f"crypten.cfg has no key {key!r}")
        check(key, value)
        if self.locked and key not in FREE and value != self._values[key]:
            raise RuntimeError(f"crypten.cfg[{key!r}]: set it before crypten.init() or "
                               "run_multiprocess; mpc_ml fixes a session's settings at its start")
        self._values[key] = value

    def __getattr__(self, name: str) -> Any:
        return _Section(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "locked":
            object.__setattr__(self, name, bool(value))
        else:
            self[name] = value

    @contextlib.contextmanager
    def temp_override(self, overrides: dict[str, Any]) -> Iterator["CrypTenConfig"]:
        """Set the dotted keys of overrides for the with block, then restore them."""
        saved = {key: self[key] for key in overrides}
        try:
            for key, value in overrides.items():
                self[key] = value
            yield self
        finally:
            for key, value in saved.items():
                self._values[key] = value

    def config(self, **extra) -> Config:
        """The mpc_ml Config these keys mean."""
        return Config(precision_bits=self["encoder.precision_bits"],
                      validate=bool(self["debug.validation_mode"]), **extra)

    def provider(self) -> str:
        """The mpc_ml provider of mpc.provider."""
        return PROVIDERS[self["mpc.provider"]]


class _Section:
    """A dotted prefix of cfg's keys (cfg.functions, cfg.nn.dpsmpc)."""

    def __init__(self, cfg: CrypTenConfig, prefix: str):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_prefix", prefix)

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}"

    def __getattr__(self, name: str) -> Any:
        key = self._key(name)
        if key in self._cfg._values:
            return self._cfg[key]
        if any(k.startswith(key + ".") for k in self._cfg._values):
            return _Section(self._cfg, key)
        raise AttributeError(f"crypten.cfg has no key {key!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._cfg[self._key(name)] = value


def check(key: str, value: Any) -> None:
    """Refuse, naming the key, a value mpc_ml has no equivalent for."""
    if key == "encoder.precision_bits":
        Config(precision_bits=value)  # validates
    elif key == "mpc.provider":
        if value not in PROVIDERS:
            raise ValueError(f"crypten.cfg mpc.provider must be one of {sorted(PROVIDERS)} (TTP "
                             f"is mpc_ml's dealer), got {value!r}")
    elif key == "mpc.active_security" and value:
        raise ValueError("crypten.cfg mpc.active_security: mpc_ml is semi-honest (as CrypTen); "
                         "there is no active security to enable")
    elif key == "mpc.protocol" and value != "beaver":
        raise ValueError(f"crypten.cfg mpc.protocol: mpc_ml multiplies with Beaver triples only, "
                         f"got {value!r}")
    elif key.startswith(("functions.", "nn.dpsmpc.protocol")) and value != CRYPTEN_DEFAULTS[key]:
        raise ValueError(f"crypten.cfg {key} = {value!r}: mpc_ml has one method per function, "
                         "with a stated error bound (docs/functions.md), and no such knob; "
                         "leave it at CrypTen's default")


cfg = CrypTenConfig()
