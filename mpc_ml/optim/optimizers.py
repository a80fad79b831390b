"""Optimizers for private parameters: SGD and Adam, torch.optim's arguments.

Steps run under no_grad and update each parameter's shares in place, so the
parameter stays the same leaf tensor that the model holds.
"""
from __future__ import annotations

from typing import Iterable

from ..tensor import MPCTensor, no_grad, settle


class Optimizer:
    """Holds the parameters and per-parameter state."""

    def __init__(self, params: Iterable[MPCTensor], defaults: dict):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, MPCTensor):
                raise TypeError("mpc_ml optimizers update private parameters: call "
                                "model.encrypt(src) before creating the optimizer")
        self.defaults = defaults
        self.state: dict[int, dict] = {id(p): {} for p in self.params}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (always to None, whatever set_to_none)."""
        for p in self.params:
            p.grad = None

    @staticmethod
    def _assign(p: MPCTensor, value: MPCTensor) -> None:
        p.set_(value)

    def _settle(self) -> None:
        """The updates' truncations (lazy truncation), for every parameter at once: one
        round per step instead of one per parameter."""
        settle(self.params)

    def step(self) -> None:
        """Update every parameter from its gradient; subclasses define it."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov."""

    def __init__(self, params: Iterable[MPCTensor], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr must be positive; momentum and weight_decay non-negative")
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    @no_grad()
    def step(self) -> None:
        """One SGD update of every parameter that has a gradient."""
        settle(p.grad for p in self.params)  # one round for all pending gradients
        for p in self.params:
            if p.grad is None:
                continue
            d = p.grad
            if self.weight_decay:
                d = d + p * self.weight_decay
            if self.momentum:
                state = self.state[id(p)]
                buf = state.get("momentum_buffer")
                buf = d if buf is None else buf * self.momentum + d * (1 - self.dampening)
                state["momentum_buffer"] = buf
                d = d + buf * self.momentum if self.nesterov else buf
            self._assign(p, p - d * self.lr)
        self._settle()


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015).

    In fixed point, g^2 (1 - beta2) underflows for |g| below about 0.1, so the second
    moment is kept as u = beta2 u + (s g)^2 with s = 2^8 and read back as
    v = u (1 - beta2) / s^2; then |g| down to about 1e-3 keeps its square. eps is added
    to sqrt(v_hat) as in torch, but values below 2^-16 vanish: the default is 1e-3.
    """

    SCALE = 2.0 ** 8

    def __init__(self, params: Iterable[MPCTensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-3,
                 weight_decay: float = 0.0):
        if lr <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0:
            raise ValueError("invalid Adam hyper-parameters")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = 0

    @no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        self.steps += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        settle(p.grad for p in self.params)  # one round for all pending gradients
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad + p * self.weight_decay if self.weight_decay else p.grad
            state = self.state[id(p)]
            m = g * (1 - b1) if "m" not in state else state["m"] * b1 + g * (1 - b1)
            scaled = g * self.SCALE
            u = scaled * scaled if "u" not in state else state["u"] * b2 + scaled * scaled
            state["m"], state["u"] = m, u
            # divide (not multiply by a small constant: division keeps its precision)
            denom = (u / (correction2 / (1 - b2))).sqrt() / self.SCALE + self.eps
            self._assign(p, p - m * denom.reciprocal() * (self.lr / correction1))
        self._settle()
