"""Module: parameters, buffers and children, as torch.nn.Module, plus encrypt/decrypt.

A Module holds plaintext torch tensors until encrypt(src) secret-shares every
floating-point parameter and buffer from party src (the model owner); the other
parties only need the same architecture. decrypt() reveals them again. Parameters
become private leaves that require grad, so loss.backward() fills their .grad.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Iterable, Iterator

import torch

from ..tensor import MPCTensor, encrypt, no_grad, settle

Tensor = torch.Tensor | MPCTensor


class Module:
    """Base class of mpc_ml layers and models (torch.nn.Module's API where it applies)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------------------
    def register_parameter(self, name: str, value: Tensor | None) -> None:
        """Add (or replace) parameter `name`; None registers an absent one."""
        self._parameters[name] = value

    def register_buffer(self, name: str, value: Tensor | None) -> None:
        """Add (or replace) buffer `name`; None registers an absent one."""
        self._buffers[name] = value

    def add_module(self, name: str, module: "Module | None") -> None:
        """Add (or replace) child module `name`."""
        self._modules[name] = module

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Module):
            self._modules[name] = value
        elif name in self._parameters:
            self._parameters[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table, {})
            if name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- traversal --------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) of each direct child."""
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self) -> Iterator["Module"]:
        """The direct children."""
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) of this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        """This module and every descendant."""
        return (m for _, m in self.named_modules())

    def _named(self, tables: tuple[str, ...], prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """The one walk: (key, value) of each entry of these tables, under torch's keys."""
        for module_name, module in self.named_modules(prefix):
            for table in tables:
                for name, value in getattr(module, table).items():
                    if value is not None:
                        yield (f"{module_name}.{name}" if module_name else name), value

    def named_state(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """Every parameter and buffer, module by module, under torch's state_dict keys."""
        return self._named(("_parameters", "_buffers"), prefix)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(torch key, value) of every parameter."""
        return self._named(("_parameters",), prefix)

    def parameters(self) -> Iterator[Tensor]:
        """Every parameter (private after encrypt())."""
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(torch key, value) of every buffer."""
        return self._named(("_buffers",), prefix)

    def buffers(self) -> Iterator[Tensor]:
        """Every buffer."""
        return (b for _, b in self.named_buffers())

    # -- devices ---------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "Module":
        """Move every parameter and buffer (shares or public tensors) to device, in place;
        a private parameter stays the same leaf (its shares move, as set_ does)."""
        for module in self.modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if isinstance(value, MPCTensor):
                        with no_grad():
                            value.set_(value.to(device))
                    elif isinstance(value, torch.Tensor):
                        table[name] = value.to(device)
        return self

    def cuda(self) -> "Module":
        """to('cuda')."""
        return self.to("cuda")

    def cpu(self) -> "Module":
        """to('cpu')."""
        return self.to("cpu")

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode on this module and its descendants."""
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        """train(False)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop the gradient of every private parameter."""
        for p in self.parameters():
            if isinstance(p, MPCTensor):
                p.grad = None

    def update_parameters(self, learning_rate: float) -> None:
        """One plain gradient step, p -= learning_rate * p.grad, on every private parameter
        with a gradient (CrypTen's Module.update_parameters): the gradients' and the
        updates' truncations each settle in one round for all parameters, as optim.SGD."""
        params = [p for p in self.parameters() if isinstance(p, MPCTensor) and p.grad is not None]
        with no_grad():
            settle(p.grad for p in params)
            for p in params:
                p.set_(p - p.grad * learning_rate)
            settle(params)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Parameters and buffers under torch's keys (plaintext after decrypt())."""
        return OrderedDict(self.named_state())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy plaintext tensors in by key (shapes must match)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, value in state.items():
            if key not in own:
                continue
            if tuple(own[key].shape) != tuple(value.shape):
                raise ValueError(f"load_state_dict: {key} has shape {tuple(value.shape)}, "
                                 f"the module expects {tuple(own[key].shape)}")
            module_name, _, name = key.rpartition(".")
            module = self.get_submodule(module_name)
            table = module._parameters if name in module._parameters else module._buffers
            table[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value

    def get_submodule(self, target: str) -> "Module":
        """The descendant at dotted path target ("" is self)."""
        module = self
        for part in filter(None, target.split(".")):
            module = module._modules[part]
        return module

    # -- privacy -----------------------------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        """Whether any parameter is private."""
        return any(isinstance(p, MPCTensor) for p in self.parameters())

    def encrypt(self, src: int = 0, *, mode: bool = True) -> "Module":
        """Secret-share every floating-point parameter and buffer from party src, fixed
        (MPCTensor.fix_masks: each is opened against a mask once, however many queries).
        mode=False is decrypt() (CrypTen's encrypt(mode=False))."""
        if not mode:
            return self.decrypt()
        for module in self.modules():
            for table, trainable in (("_parameters", True), ("_buffers", False)):
                entries = getattr(module, table)
                for name, value in entries.items():
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        private = encrypt(value, src=src, shape=value.shape).fix_masks()
                        entries[name] = private.requires_grad_() if trainable else private
        return self

    def decrypt(self, dst: int | None = None) -> "Module":
        """Reveal every private parameter and buffer (to dst only, if given)."""
        for module in self.modules():
            for table in ("_parameters", "_buffers"):
                entries = getattr(module, table)
                for name, value in entries.items():
                    if isinstance(value, MPCTensor):
                        entries[name] = value.decrypt(dst)
        return self

    # -- checkpoints (format and checks in mpc_ml.checkpoint) -----------------------------------
    def save_shares(self, path: str | os.PathLike[str], optimizer: Any = None) -> str:
        """Write this party's shares (and optimizer's state) to path, "{rank}" replaced by
        the rank, with a checksum agreed across parties. Collective; returns the file."""
        from .checkpoint import save_shares
        return save_shares(self, path, optimizer)

    def load_shares(self, path: str | os.PathLike[str], optimizer: Any = None) -> "Module":
        """Load this party's shares saved by save_shares; refused unless every party's file
        is intact and of the same checkpoint, world size and precision. Collective."""
        from .checkpoint import load_shares
        return load_shares(self, path, optimizer)

    # -- calling -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs) -> Any:
        """The computation; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs) -> Any:
        """forward(*args, **kwargs)."""
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        """What repr() shows inside the parentheses."""
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


class Sequential(Module):
    """Modules applied in order."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def forward(self, x: Any) -> Any:
        """x through every module in order."""
        for module in self.children():
            x = module(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]

    def __len__(self) -> int:
        return len(self._modules)


class ModuleList(Module):
    """A list of modules registered as children."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return self.children()
