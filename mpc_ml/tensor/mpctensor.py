"""MPCTensor: a secret-shared tensor whose methods mirror torch's.

Each party holds `share`, an int64 tensor; the plaintext is sum(shares) / 2^f. This
module only routes: every protocol lives in primitives/. Public operands (Python
numbers, torch tensors) are accepted on either side of every binary operator.

Every op ends at one recording point, record(), where its observers see it: the autograd
tape (tape.py), the validation mode (validation.py, when Config(validate=True)) and any
observers on the session (the correlation trace, trace.py).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NoReturn, Sequence, overload

import torch
import torch.nn.functional as F

from ..core import ring
from ..core.encoding import decode, encode
from ..core.ops import Op
from ..primitives import (ALL_PAIRS_UP_TO, approximations, beaver_product, fixed_mask_product,
                          flush_riders, lazy_products, ltz, max_all_pairs, max_along_last,
                          max_one_hot, negative_part, reveal, share_input, truncate,
                          truncate_later, uniform_share)
from ..session import Session, current
from . import tape
from .validation import validate

Public = torch.Tensor | float | int | bool
"""A public operand: a torch tensor or a Python number (encoded on the fly)."""
Dims = int | tuple[int, ...] | list[int]
"""One dimension, or a tuple or list of them (as torch's dim arguments)."""


def record(op: Op, out: "MPCTensor", inputs: tuple, **ctx) -> "MPCTensor":
    """The recording point: `out = op(*inputs)`, with what its gradient needs (ctx), is
    shown to the tape, the validation mode and the session's observers; returns out."""
    tape.record(op, out, inputs, ctx)
    source = inputs[0] if inputs else None
    if (op in VIEWS and isinstance(source, MPCTensor) and source._masks is not None
            and out._data.untyped_storage().data_ptr() == source._data.untyped_storage().data_ptr()):
        # a view of fixed weights (sharing their storage: never a copy) is fixed, in the family
        key = (op.value, tuple(out.shape), repr(sorted(ctx.items())))
        out._masks, out._family = source._masks.setdefault(key, {}), source._family
    session = out.session
    if session.config.validate:
        validate(op, out, inputs, ctx)
    for observe in session.op_observers:
        observe(op, out, inputs, ctx)
    return out


VIEWS = (Op.RESHAPE, Op.TRANSPOSE, Op.PERMUTE)
"""Shape ops whose result from a fixed tensor (fix_masks), when it shares the tensor's
storage, is fixed too: one family, whose openings any assignment to a member drops."""

PUBLIC_INTEGER_BOUND = 2 ** 31
"""Public whole-number multipliers below this multiply shares exactly, with no truncation."""


def _is_integral(p: torch.Tensor) -> bool:
    """Whether a public multiplier is a whole number |p| < 2^31 (exact, no truncation); an
    integer tensor beyond that bound would wrap the ring and is refused."""
    if not p.is_floating_point():
        if p.numel() and int(p.to(torch.int64).abs().max()) >= PUBLIC_INTEGER_BOUND:
            raise ValueError(f"public integer operand {int(p.to(torch.int64).abs().max())} is "
                             f"too large: |p| < 2^31 multiplies shares exactly; pass a float "
                             "tensor to have it encoded instead")
        return True
    return p.numel() > 0 and bool(torch.all(p == torch.round(p))) and bool(
        p.abs().max() < PUBLIC_INTEGER_BOUND)


def _result_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.get_default_dtype()


class MPCTensor:
    """A private tensor: this party's additive share of a fixed-point tensor.

    Lazy truncation: a product leaves its result *pending*, at scale 2^(f + pending),
    and the truncation by `pending` bits is paid where the value is next needed
    (protocols/lazy_product.toml): not at all by decrypt() (decoded at the higher scale)
    and linear or shape ops, in the Beaver opening of the next elementwise product
    (lazy_products), riding on the next comparison's opening (relu, abs, clamp), or in
    a round of its own when `share` is read.
    """

    __array_priority__ = 1000  # numpy defers binary operators to us

    def __init__(self, share: torch.Tensor, session: Session, dtype: torch.dtype | None = None,
                 pending: int = 0):
        if share.dtype != torch.int64:
            raise TypeError(f"shares are int64 ring elements, got {share.dtype}")
        self._data = share
        self._pending = pending
        self._riding = None  # the token of its truncation, when queued to ride on an opening
        self.session = session
        self.dtype = dtype or torch.get_default_dtype()
        self.requires_grad = False
        self.grad: MPCTensor | None = None
        self.grad_fn = None  # the autograd node that made this tensor, if any
        self._masks: dict | None = None  # a fixed tensor's opening, and its views' (fix_masks)
        self._family: list[int] | None = None  # [version] shared by a fixed tensor and its views
        self._version = 0  # in-place ops so far (autograd refuses a graph that saw an older one)

    # -- plumbing ---------------------------------------------------------------
    @property
    def share(self) -> torch.Tensor:
        """This party's int64 share at scale 2^f (a pending truncation is settled first)."""
        if self._pending:
            if self._riding is not None:
                flush_riders(self.session)
            else:
                self._settled(truncate(self.session, self._data, self._pending))
        return self._data

    @share.setter
    def share(self, value: torch.Tensor) -> None:
        self._settled(value)
        self._drop_masks()

    def fix_masks(self) -> "MPCTensor":
        """Mark this private tensor as fixed (a model's weights, which Module.encrypt marks):
        under no_grad (inference), the first Beaver product with it on the right opens it
        against a fixed mask, and later products with it (or with a reshaped, transposed or
        permuted view of it that shares its storage) reuse that opening, so that a query's
        bytes do not grow with the weights (protocols/fixed_mask.toml). Assigning to it or to
        such a view (set_, .share =, item assignment) makes every opening in the family
        stale: a changed value is opened against a new mask. With grad enabled
        and in backward() (training, where every step changes the weights) products are
        plain Beaver ones."""
        if self._masks is None:
            self._masks, self._family = {}, [0]
        return self

    def _drop_masks(self) -> None:
        """An assignment to a fixed tensor or to a view of it (which may share its storage):
        every opening in the family is stale."""
        if self._family is not None:
            self._family[0] += 1

    def _settled(self, share: torch.Tensor) -> None:
        self._data, self._pending, self._riding = share, 0, None

    def _settle_later(self) -> None:
        """Queue the pending truncation to ride on the next opening (no round of its own).
        If the tensor is assigned meanwhile (set_, .share =), the rider's result is dropped."""
        if self._pending and self._riding is None:
            token = self._riding = object()

            def done(share: torch.Tensor) -> None:
                if self._riding is token:
                    self._settled(share)
            truncate_later(self.session, self._data, self._pending, done)

    @property
    def _bits(self) -> int:
        return self.session.config.precision_bits

    def _new(self, share: torch.Tensor, dtype: torch.dtype | None = None,
             pending: int = 0) -> "MPCTensor":
        # type(self): a subclass's results stay of it (compat.crypten's CrypTensor)
        return type(self)(share, self.session, dtype or self.dtype, pending)

    def _like(self, data: torch.Tensor, dtype: torch.dtype | None = None) -> "MPCTensor":
        """A tensor at self's scale (pending like self) from a local map of self's data."""
        return self._new(data, dtype, self._pending)

    def _public(self, value: Public) -> torch.Tensor:
        return torch.as_tensor(value, device=self._data.device)

    def _public_share(self, value: Public, shape=None, pending: int = 0) -> torch.Tensor:
        """A share of a public value: party 0 holds it encoded, the others hold 0."""
        enc = encode(self._public(value), self._bits + pending, device=self._data.device)
        if shape is not None:
            enc = enc.expand(shape)
        return enc.clone() if self.session.rank == 0 else torch.zeros_like(enc)

    def _coerce(self, other) -> "MPCTensor":
        if isinstance(other, MPCTensor):
            if other.session is not self.session:
                raise ValueError("operands belong to different MPC sessions")
            return other
        return self._new(self._public_share(other))

    # -- properties ---------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The shape (the same on every party)."""
        return self._data.shape

    def size(self, dim: int | None = None) -> torch.Size | int:
        """The shape, or the length of one dimension."""
        return self._data.size() if dim is None else self._data.size(dim)

    def dim(self) -> int:
        """The number of dimensions."""
        return self._data.dim()

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self._data.dim()

    def numel(self) -> int:
        """The number of elements."""
        return self._data.numel()

    @property
    def device(self) -> torch.device:
        """The device the shares live on."""
        return self._data.device

    @property
    def is_cuda(self) -> bool:
        """Whether the shares live on a CUDA device."""
        return self._data.is_cuda

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return (f"MPCTensor(shape={tuple(self.shape)}, party={self.session.rank}, "
                f"device={self.device}, private)")

    # -- autograd (the tape lives in mpc_ml.autograd) ---------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> "MPCTensor":
        """Track operations on this tensor so that backward() reaches it."""
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        """Whether no tracked op made this tensor (autograd accumulates .grad in leaves)."""
        return self.grad_fn is None

    def backward(self, grad: MPCTensor | Public | None = None) -> None:
        """Accumulate d(self)/d(leaf) * grad into every leaf's .grad (grad defaults to 1
        for a single-element tensor)."""
        tape.backward(self, grad)

    def detach(self) -> "MPCTensor":
        """The same shares, cut from the graph."""
        return self._like(self._data)

    # -- revealing ------------------------------------------------------------------
    def decrypt(self, dst: int | None = None) -> torch.Tensor | None:
        """The plaintext on every party, or on dst only (None elsewhere). One round; a
        pending product is decoded at its higher scale (its truncation is never paid)."""
        scale = self._bits + self._pending  # (a rider in this opening may settle self)
        value = reveal(self.session, self._data, dst)
        return None if value is None else decode(value, scale, self.dtype)

    def get_plain_text(self, dst: int | None = None) -> torch.Tensor | None:
        """decrypt(dst), by CrypTen's name."""
        return self.decrypt(dst)

    # -- linear operations (local) -------------------------------------------------
    def add(self, other: MPCTensor | Public) -> "MPCTensor":
        """self + other."""
        if isinstance(other, MPCTensor):
            o = self._coerce(other)
            (a, b), pending = aligned([self, o])
            out = self._new(a + b, _result_dtype(self.dtype, o.dtype), pending)
            return record(Op.ADD, out, (self, o))
        p = self._public(other)
        enc = encode(p, self._bits + self._pending, device=self._data.device)
        if self.session.rank == 0:
            out = self._like(self._data + enc)
        else:
            out = self._like(self._data.expand(torch.broadcast_shapes(self.shape, enc.shape)).clone())
        return record(Op.ADD, out, (self, p))

    def neg(self) -> "MPCTensor":
        """-self."""
        return record(Op.NEG, self._like(-self._data), (self,))

    def sub(self, other: MPCTensor | Public) -> "MPCTensor":
        """self - other."""
        return self.add(other.neg() if isinstance(other, MPCTensor) else -self._public(other))

    def sum(self, dim: Dims | None = None, keepdim: bool = False) -> "MPCTensor":
        """Sum over all elements or along dim (as torch.sum)."""
        settle([self])  # a sum of pending products could pass their 2^(62 - 2f) bound
        out = self._new(self.share.sum() if dim is None else self.share.sum(dim, keepdim=keepdim))
        return record(Op.SUM, out, (self,), dim=dim, keepdim=keepdim)

    def mean(self, dim: Dims | None = None, keepdim: bool = False) -> "MPCTensor":
        """Mean over all elements or along dim."""
        total = self.sum(dim, keepdim)
        count = self.numel() // max(total.numel(), 1) if dim is not None else self.numel()
        if count == 0:
            raise ValueError("mean of an empty tensor")
        return total.div(count)

    # -- products --------------------------------------------------------------------
    def mul(self, other: MPCTensor | Public) -> "MPCTensor":
        """Elementwise self * other."""
        return bilinear(Op.MUL, self, other)

    def matmul(self, other: MPCTensor | Public) -> "MPCTensor":
        """self @ other, with torch.matmul's broadcasting."""
        return bilinear(Op.MATMUL, self, other)

    def div(self, other: MPCTensor | Public) -> "MPCTensor":
        """self / other; a private divisor goes through reciprocal()."""
        if isinstance(other, MPCTensor):
            return self.mul(self._coerce(other).reciprocal())
        p = self._public(other).to(torch.float64)
        if p.numel() and bool((p == 0).any()):
            raise ZeroDivisionError("division of an MPCTensor by zero")
        # Scale 1/p by 2^(f + extra) so that even the largest divisor keeps f bits.
        extra = max(0, math.ceil(math.log2(float(p.abs().max())))) if p.numel() else 0
        bits = self._bits + extra
        recip = encode(1.0 / p, bits, device=self.share.device)
        out = self._new(truncate(self.session, self.share * recip, bits))
        return record(Op.DIV_PUBLIC, out, (self,), divisor=p)

    def conv1d(self, weight: MPCTensor | torch.Tensor, bias: MPCTensor | torch.Tensor | None = None,
               stride: ring.IntOrTuple = 1, padding: ring.Padding = 0, dilation: ring.IntOrTuple = 1,
               groups: int = 1) -> "MPCTensor":
        """torch.nn.functional.conv1d with self as input."""
        return conv1d(self, weight, bias, stride, padding, dilation, groups)

    def conv2d(self, weight: MPCTensor | torch.Tensor, bias: MPCTensor | torch.Tensor | None = None,
               stride: ring.IntOrTuple = 1, padding: ring.Padding = 0, dilation: ring.IntOrTuple = 1,
               groups: int = 1) -> "MPCTensor":
        """torch.nn.functional.conv2d with self as input."""
        return conv2d(self, weight, bias, stride, padding, dilation, groups)

    def square(self) -> "MPCTensor":
        """self * self."""
        return self * self

    def _int_pow(self, k: int) -> "MPCTensor":
        """self ** k for a whole k >= 0: repeated squaring (about 2 log2 k products)."""
        result, base = None, self
        while k:
            if k & 1:
                result = base if result is None else result * base
            k >>= 1
            if k:
                base = base * base
        return result if result is not None else self._new(self._public_share(1.0, self.shape))

    def pow(self, exponent: int | float | torch.Tensor) -> "MPCTensor":
        """self ** exponent (a public number): a whole exponent by repeated squaring (a
        negative one of reciprocal()), 0.5, -0.5 and -1 by sqrt, inv_sqrt and reciprocal;
        any other real exponent of a positive base is pos_pow()'s."""
        if isinstance(exponent, MPCTensor):
            raise TypeError("pow takes a public exponent; for a private one use pos_pow()")
        p = float(exponent) if isinstance(exponent, (int, float)) else float(torch.as_tensor(exponent).item())
        if p == int(p):
            k = int(p)
            return self._int_pow(k) if k >= 0 else self.reciprocal()._int_pow(-k)
        roots = {0.5: self.sqrt, -0.5: self.inv_sqrt}
        if p not in roots:
            raise ValueError(f"pow: private x ** {p} is supported for whole exponents, 0.5 and "
                             "-0.5; use pos_pow() for other exponents of a positive base")
        return roots[p]()

    def __pow__(self, exponent: int | float) -> "MPCTensor":
        return self.pow(exponent)

    def pos_pow(self, exponent: int | float | torch.Tensor | "MPCTensor") -> "MPCTensor":
        """self ** exponent for self > 0 and any real (public or private) exponent, as
        CrypTen: a whole public exponent by pow(), else exp(exponent * log(self)) (log's
        domain and error, then the wide exp's: accurate while |exponent log self| <= 8,
        about 0 rather than garbage down to -710)."""
        if not isinstance(exponent, MPCTensor):
            p = torch.as_tensor(exponent)
            if p.numel() == 1 and float(p) == int(float(p)):
                return self.pow(int(float(p)))
        return (self.log() * exponent)._exp_wide()

    def polynomial(self, coeffs: Sequence[float] | torch.Tensor | "MPCTensor") -> "MPCTensor":
        """sum_i coeffs[i] * self ** (i + 1), as CrypTen (the linear term first, no constant
        term): the powers in ceil(log2 k) product rounds (each round multiplies the powers
        so far by the highest), then one product by the coefficients and a sum."""
        c = coeffs if isinstance(coeffs, MPCTensor) else torch.as_tensor(coeffs, dtype=torch.float64)
        if c.dim() != 1 or c.shape[0] == 0:
            raise ValueError("polynomial coefficients must be a non-empty 1-d sequence or tensor")
        k = c.shape[0]
        terms = self.unsqueeze(0)
        while terms.shape[0] < k:
            top = terms[terms.shape[0] - 1:]
            terms = cat([terms, terms[:k - terms.shape[0]] * top])
        c = c.reshape(k, *[1] * self.dim())
        return (terms * c).sum(0)

    def prod(self, dim: int | None = None, keepdim: bool = False) -> "MPCTensor":
        """Product of all elements, or along dim (as torch.prod): a tree of elementwise
        products, ceil(log2 k) rounds."""
        if dim is None:
            out = self.reshape(-1).prod(0)
            return out.reshape([1] * self.dim()) if keepdim else out
        x = self.movedim(dim, -1) if self.dim() else self.reshape(1)
        while x.shape[-1] > 1:
            half = x.shape[-1] // 2
            paired = x[..., :half] * x[..., half:2 * half]
            x = cat([paired, x[..., 2 * half:]], -1) if x.shape[-1] % 2 else paired
        out = x.squeeze(-1) if self.dim() else x.reshape(())
        return out.unsqueeze(dim) if keepdim and self.dim() else out

    def movedim(self, source: int, destination: int) -> "MPCTensor":
        """Dimension source moved to position destination (as torch.movedim)."""
        dims = list(range(self.dim()))
        dims.insert(destination % self.dim(), dims.pop(source % self.dim()))
        return self.permute(dims)

    def dot(self, other: MPCTensor | Public) -> "MPCTensor":
        """The inner product of two 1-d tensors."""
        if self.dim() != 1 or len(other.shape) != 1:
            raise ValueError("dot expects 1-d tensors")
        return self.matmul(other)

    def ger(self, other: MPCTensor | Public) -> "MPCTensor":
        """The outer product of two 1-d tensors: one broadcast elementwise product."""
        other = other.unsqueeze(0) if isinstance(other, MPCTensor) else torch.as_tensor(other).unsqueeze(0)
        return self.unsqueeze(1) * other

    def outer(self, other: MPCTensor | Public) -> "MPCTensor":
        """ger(), under torch's newer name."""
        return self.ger(other)

    def norm(self, p: float | str = "fro", dim: Dims | None = None,
             keepdim: bool = False) -> "MPCTensor":
        """The p-norm over all elements or along dim: p = 1 (sum of abs), 2 or 'fro' (sqrt of
        the sum of squares), inf (max of abs), other p >= 1 by pos_pow (as CrypTen)."""
        p = 2 if p == "fro" else p
        if not isinstance(p, (int, float)) or p < 1:
            raise ValueError(f"norm: p must be 'fro' or a number >= 1, got {p!r}")

        def summed(t: MPCTensor) -> MPCTensor:
            return t.sum() if dim is None else t.sum(dim, keepdim=keepdim)
        if p == 1:
            return summed(self.abs())
        if p == 2:
            return summed(self.square()).sqrt()
        if p == math.inf:
            if dim is None:
                return self.abs().max()
            if not isinstance(dim, int):
                raise ValueError("norm(p=inf) takes one dim")
            return self.abs().max(dim, keepdim)[0]
        return summed(self.abs().pos_pow(p)).pos_pow(1 / p)

    def var(self, dim: Dims | None = None, unbiased: bool | None = None, keepdim: bool = False, *,
            correction: int | None = None) -> "MPCTensor":
        """Variance over all elements or along dim, sum((x - mean)^2) / (N - correction):
        correction 1 by default (unbiased), 0 with unbiased=False, as torch.var."""
        if correction is None:
            correction = 0 if unbiased is False else 1
        dims = tuple(range(self.dim())) if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
        count = math.prod(self.shape[d] for d in dims)
        if count - correction <= 0:
            raise ValueError(f"var of {count} elements with correction {correction}")
        centred = self - self.mean(dims, keepdim=True)
        return centred.square().sum(dims, keepdim=keepdim).div(count - correction)

    def std(self, dim: Dims | None = None, unbiased: bool | None = None, keepdim: bool = False, *,
            correction: int | None = None) -> "MPCTensor":
        """sqrt(var(...)), as torch.std."""
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def cumsum(self, dim: int) -> "MPCTensor":
        """Running sums along dim (local)."""
        settle([self])  # as sum(): partial sums of pending products could pass their bound
        return record(Op.CUMSUM, self._new(self.share.cumsum(dim)), (self,), dim=dim)

    def trace(self) -> "MPCTensor":
        """The sum of a 2-d tensor's diagonal."""
        if self.dim() != 2:
            raise ValueError("trace expects a 2-d tensor")
        rows, cols = self.shape
        return self.take(torch.arange(min(rows, cols)) * (cols + 1)).sum()

    def cosine_similarity(self, other: MPCTensor | Public, dim: int = 1,
                          eps: float = 1e-8) -> "MPCTensor":
        """sum(x y) / sqrt(sum(x^2) sum(y^2)) along dim, one inv_sqrt (whose domain bounds
        the product of the squared norms by 2^45); eps is accepted for torch's signature: a
        zero vector gives 0 (inv_sqrt(0) = 0), as torch does."""
        xy = (self * other).sum(dim)
        xx = self.square().sum(dim)
        yy = (other.square() if isinstance(other, MPCTensor) else torch.as_tensor(other) ** 2).sum(dim)
        return xy * (xx * yy).inv_sqrt()

    def hardtanh(self, min_val: float = -1.0, max_val: float = 1.0) -> "MPCTensor":
        """clamp(min_val, max_val), as torch.nn.functional.hardtanh: one comparison."""
        return self.clamp(min_val, max_val)

    def relu6(self) -> "MPCTensor":
        """clamp(0, 6), as torch.nn.functional.relu6."""
        return self.clamp(0.0, 6.0)

    def _trig(self) -> tuple["MPCTensor", "MPCTensor"]:
        c, s, pending = approximations.cos_sin(self.session, self.share)
        return self._new(c, pending=pending), self._new(s, pending=pending)

    def cos(self) -> "MPCTensor":
        """Cosine (approximations.cos_sin: ceil(log2 n) rounds; see ERROR_BOUNDS)."""
        return record(Op.COS, self._trig()[0], (self,))

    def sin(self) -> "MPCTensor":
        """Sine (approximations.cos_sin: ceil(log2 n) rounds; see ERROR_BOUNDS)."""
        return record(Op.SIN, self._trig()[1], (self,))

    def cossin(self) -> tuple["MPCTensor", "MPCTensor"]:
        """(cos(self), sin(self)) from one protocol run, as CrypTen's cossin."""
        c, s = self._trig()
        return record(Op.COS, c, (self,)), record(Op.SIN, s, (self,))

    # -- comparisons (private 0/1 results, in fixed point) ---------------------------------
    def _bit(self, bit_share: torch.Tensor) -> "MPCTensor":
        """A 0/1 integer bit share as a fixed-point 0.0/1.0 tensor (local)."""
        return self._new(bit_share << self._bits)

    def _difference(self, other) -> "MPCTensor":
        other_shape = other.shape if isinstance(other, MPCTensor) else self._public(other).shape
        try:
            torch.broadcast_shapes(self.shape, other_shape)
        except RuntimeError:
            raise ValueError(f"cannot compare tensors of shapes {tuple(self.shape)} and "
                             f"{tuple(other_shape)}") from None
        with tape.no_grad():
            return self.sub(other)

    def _operand(self, other):
        """other as recorded: a private tensor, or the public tensor."""
        return self._coerce(other) if isinstance(other, MPCTensor) else self._public(other)

    def lt(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self < other] as 0.0/1.0."""
        out = self._bit(ltz(self.session, self._difference(other)._data))
        return record(Op.LT, out, (self, self._operand(other)))

    def gt(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self > other] as 0.0/1.0."""
        out = self._bit(ltz(self.session, -self._difference(other)._data))
        return record(Op.GT, out, (self, self._operand(other)))

    def le(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self <= other] as 0.0/1.0."""
        return self.gt(other).neg().add(1.0)

    def ge(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self >= other] as 0.0/1.0."""
        return self.lt(other).neg().add(1.0)

    def _both_signs(self, d: "MPCTensor") -> tuple[torch.Tensor, torch.Tensor]:
        """([d < 0], [d > 0]) as integer bits, in one comparison (at d's own scale)."""
        bits = ltz(self.session, torch.stack([d._data, -d._data]))
        return bits[0], bits[1]

    def eq(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self == other] as 0.0/1.0 (equal within the fixed-point resolution)."""
        d = self._difference(other)
        settle([d])  # equality within 2^-f: at the settled scale
        below, above = self._both_signs(d)
        out = self._new((-(below + above) << self._bits) + self._public_share(1.0, below.shape))
        return record(Op.EQ, out, (self, self._operand(other)))

    def ne(self, other: MPCTensor | Public) -> "MPCTensor":
        """Private [self != other] as 0.0/1.0."""
        d = self._difference(other)
        settle([d])  # as eq
        below, above = self._both_signs(d)
        return record(Op.NE, self._bit(below + above), (self, self._operand(other)))

    def sign(self) -> "MPCTensor":
        """-1, 0 or 1 per element, as torch.sign."""
        below, above = self._both_signs(self)
        return record(Op.SIGN, self._bit(above - below), (self,))

    def _sign_probe(self) -> torch.Tensor:
        """self's data for a sign test, at its own scale; a pending truncation is queued to
        ride on the test's first opening, so that self.share is settled after it."""
        self._settle_later()
        return self._data

    def _negative_part(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [x < 0], [x < 0]) for x = self.share, compared at self's own scale."""
        return negative_part(self.session, lambda: self.share, self._sign_probe())

    def abs(self) -> "MPCTensor":
        """|self|: self - 2 self [self < 0]."""
        neg, negative = self._negative_part()
        return record(Op.ABS, self._new(self.share - 2 * neg), (self,), negative=negative)

    def relu(self) -> "MPCTensor":
        """max(self, 0): self - self [self < 0]."""
        neg, negative = self._negative_part()
        return record(Op.RELU, self._new(self.share - neg), (self,), negative=negative)

    def clamp(self, min: Public | None = None, max: Public | None = None) -> "MPCTensor":
        """torch.clamp with public bounds: min + relu(x - min) - relu(x - max), one comparison."""
        if min is None and max is None:
            raise ValueError("clamp needs min or max")
        if min is None:
            return self.sub(self.sub(max).relu())
        if max is None:
            return self.sub(min).relu().add(min)
        with tape.no_grad():
            lo, hi = self.sub(min), self.sub(max)
        # [x < min], [x < max], and min + relu(x - min) - relu(x - max) = min + (lo - lo b0) - (hi - hi b1)
        probe = torch.stack([lo._data, hi._data])
        self._settle_later()  # self.share is settled by the comparison's first opening

        def settled() -> tuple[torch.Tensor, torch.Tensor]:
            return tuple(self.share - self._public_share(b, self.shape) for b in (min, max))
        parts, below = negative_part(self.session, lambda: torch.stack(settled()), probe)
        lo, hi = settled()
        out = self._new(lo - parts[0] - hi + parts[1] + self._public_share(min, lo.shape))
        return record(Op.CLAMP, out, (self,), inside=below[1] - below[0], min=min, max=max)

    def _reduce_max(self, dim, keepdim: bool, sign: int, one_hot: bool = False):
        """(values, indices, one-hot mask or None) of max (sign 1) / min (-1) along dim."""
        moved = (self._data.reshape(-1) if dim is None else self._data.movedim(dim, -1)) * sign
        hot = None
        if one_hot or tape.wants((self,)):
            top, hot = max_one_hot(self.session, moved)
            positions = torch.arange(moved.shape[-1], dtype=torch.int64, device=moved.device)
            idx = (hot * (positions << self._bits)).sum(-1)
        else:
            top, idx = max_along_last(self.session, moved, 1 << self._bits)
        if dim is not None and keepdim:
            top, idx = top.unsqueeze(dim), idx.unsqueeze(dim)
        mask = None
        if hot is not None:
            mask = hot.reshape(self.shape) if dim is None else hot.movedim(-1, dim)
        where = dict(dim=dim, keepdim=keepdim, sign=sign)
        values = record(Op.MAX, self._like(top * sign), (self,), mask=mask, **where)
        indices = record(Op.ARGMAX, self._new(idx), (self,), one_hot=False, **where)
        return values, indices, mask

    @overload
    def max(self, dim: None = None, keepdim: bool = False) -> MPCTensor: ...
    @overload
    def max(self, dim: int, keepdim: bool = False) -> tuple[MPCTensor, MPCTensor]: ...

    def max(self, dim: int | None = None,
            keepdim: bool = False) -> MPCTensor | tuple[MPCTensor, MPCTensor]:
        """Max of all elements, or (values, private indices) along dim, as torch.max."""
        values, indices, _ = self._reduce_max(dim, keepdim, 1)
        return values if dim is None else (values, indices)

    @overload
    def min(self, dim: None = None, keepdim: bool = False) -> MPCTensor: ...
    @overload
    def min(self, dim: int, keepdim: bool = False) -> tuple[MPCTensor, MPCTensor]: ...

    def min(self, dim: int | None = None,
            keepdim: bool = False) -> MPCTensor | tuple[MPCTensor, MPCTensor]:
        """Min of all elements, or (values, private indices) along dim, as torch.min."""
        values, indices, _ = self._reduce_max(dim, keepdim, -1)
        return values if dim is None else (values, indices)

    def argmax(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> "MPCTensor":
        """Private index of the (first) maximum; one_hot=True gives the private one-hot mask."""
        return self._arg(dim, keepdim, one_hot, 1)

    def argmin(self, dim: int | None = None, keepdim: bool = False, one_hot: bool = False) -> "MPCTensor":
        """Private index of the (first) minimum; one_hot=True gives the private one-hot mask."""
        return self._arg(dim, keepdim, one_hot, -1)

    def _arg(self, dim, keepdim, one_hot, sign) -> "MPCTensor":
        _, idx, mask = self._reduce_max(dim, keepdim, sign, one_hot)
        if not one_hot:
            return idx
        return record(Op.ARGMAX, self._bit(mask), (self,), one_hot=True, dim=dim, keepdim=keepdim,
                      sign=sign)

    def max_pool2d(self, kernel_size: ring.IntOrTuple, stride: ring.IntOrTuple | None = None,
                   padding: ring.IntOrTuple = 0, dilation: ring.IntOrTuple = 1,
                   ceil_mode: bool = False,
                   return_indices: bool = False) -> MPCTensor | tuple[MPCTensor, MPCTensor]:
        """torch.nn.functional.max_pool2d (padding counts as -inf). return_indices=True also
        gives each maximum's position in its H x W plane as a private index, as torch's
        indices decrypt (the first maximum on ties): sum_j [j wins] * position_j from the
        window's private one-hot mask, local once the mask is made (an index rather than the
        mask: the output's size, not kernel-size times it, and what torch returns)."""
        # -2^30 at scale 2^f; -2^(61 - f - pending) for a pending input (its scale is higher)
        low = -(1 << 61) if self._pending else int(encode(-(2.0 ** 30), self._bits))
        fill = low if self.session.rank == 0 else 0
        geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                        ceil_mode=ceil_mode)
        win = ring.sliding_windows(self._data, fill=fill, **geometry)
        if return_indices or tape.wants((self,)):
            top, hot = max_one_hot(self.session, win)
        else:
            (top, _), hot = max_along_last(self.session, win, 0), None
        values = record(Op.MAX_POOL2D, self._like(top), (self,), mask=hot, geometry=geometry,
                        input_shape=self.shape)
        if not return_indices:
            return values
        h, w = self.shape[-2:]
        plane = torch.arange(h * w, dtype=torch.int64, device=win.device).reshape(1, 1, h, w)
        positions = ring.sliding_windows(plane, fill=0, **geometry)
        index = (hot * (positions << self._bits)).sum(-1)
        return values, record(Op.MAX_POOL2D_INDICES, self._new(index), (self,), geometry=geometry)

    def adaptive_max_pool2d(self, output_size: int | Sequence[int | None],
                            return_indices: bool = False) -> MPCTensor | tuple[MPCTensor, MPCTensor]:
        """torch.nn.functional.adaptive_max_pool2d to any size: output cell i of a dim is the
        max of input positions floor(i L / out) .. ceil((i + 1) L / out) - 1, as torch. The
        windows are gathered by a public index (shorter ones repeat their last element, which
        changes neither the max nor, the first maximum winning, its index) and reduced by one
        tournament each; return_indices=True adds the private flat index in the H x W plane."""
        sizes = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        return self._adaptive_max(sizes, return_indices)

    def adaptive_max_pool1d(self, output_size: int | Sequence[int],
                            return_indices: bool = False) -> MPCTensor | tuple[MPCTensor, MPCTensor]:
        """torch.nn.functional.adaptive_max_pool1d, as adaptive_max_pool2d over the last dim."""
        sizes = (output_size,) if isinstance(output_size, int) else tuple(output_size)
        return self._adaptive_max(sizes, return_indices)

    def _adaptive_max(self, sizes: tuple, return_indices: bool):
        lengths = self.shape[self.dim() - len(sizes):]
        cells = []  # per pooled dim: (out, padded window) positions along that dim
        for length, out in zip(lengths, sizes):
            out = length if out is None else out
            bounds = [((i * length) // out, -(-((i + 1) * length) // out)) for i in range(out)]
            width = max(hi - lo for lo, hi in bounds)
            cells.append(torch.tensor([list(range(lo, hi)) + [hi - 1] * (width - hi + lo)
                                       for lo, hi in bounds], dtype=torch.int64))
        if len(cells) == 1:
            flat = cells[0]  # (out, window) positions along the last dim
        elif len(cells) == 2:  # (out_h, out_w, window) positions in the H x W plane, row-major
            rows, cols = cells
            flat = (rows[:, None, :, None] * lengths[1] + cols[None, :, None, :]).reshape(
                rows.shape[0], cols.shape[0], -1)
        else:
            raise ValueError(f"adaptive max pooling over {len(cells)} dims")
        outs = [c.shape[0] for c in cells]
        flat = flat.to(self.device)
        lead = self.shape[:self.dim() - len(sizes)]
        windows = self.reshape(*lead, -1).index_select(-1, flat.reshape(-1))
        windows = windows.reshape(*lead, *outs, flat.shape[-1])
        if flat.shape[-1] == 1:
            values = windows.squeeze(-1)
            index = self._new(self._public_share(flat[..., 0].expand(values.shape).to(torch.float64)))
        else:
            values, _, hot = windows._reduce_max(-1, False, 1, one_hot=return_indices)
            index = self._new((hot * (flat << self._bits)).sum(-1)) if return_indices else None
        if not return_indices:
            return values
        return values, record(Op.MAX_POOL2D_INDICES, index, (self,), output_size=sizes)

    def relu_max_pool2d(self, kernel_size: ring.IntOrTuple, stride: ring.IntOrTuple | None = None,
                        padding: ring.IntOrTuple = 0, dilation: ring.IntOrTuple = 1,
                        ceil_mode: bool = False) -> "MPCTensor":
        """max_pool2d(relu(self)) in one comparison depth: every pair of a window's elements
        and 0 compared at once (max_all_pairs); what from_pytorch runs for a ReLU whose only
        use is a MaxPool2d. Windows of more than ALL_PAIRS_UP_TO - 1 elements: relu, then
        max_pool2d."""
        geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                        ceil_mode=ceil_mode)
        kh, kw = ring.pair(kernel_size, 2)
        if kh * kw + 1 > ALL_PAIRS_UP_TO:
            return self.relu().max_pool2d(**geometry)
        low = -(1 << 61) if self._pending else int(encode(-(2.0 ** 30), self._bits))
        win = ring.sliding_windows(self._data, fill=low if self.session.rank == 0 else 0, **geometry)
        top, hot = max_all_pairs(self.session, win, with_zero=True)
        return record(Op.MAX_POOL2D, self._like(top), (self,), mask=hot, geometry=geometry,
                      input_shape=self.shape, relu=True)

    def avg_pool2d(self, kernel_size: ring.IntOrTuple, stride: ring.IntOrTuple | None = None,
                   padding: ring.IntOrTuple = 0, ceil_mode: bool = False,
                   count_include_pad: bool = True) -> "MPCTensor":
        """torch.nn.functional.avg_pool2d."""
        total = self._new(ring.sliding_windows(self.share, kernel_size, stride, padding, 1, 0,
                                               ceil_mode).sum(-1))
        total = record(Op.WINDOW_SUM, total, (self,), input_shape=self.shape, geometry=dict(
            kernel_size=kernel_size, stride=stride, padding=padding, dilation=1,
            ceil_mode=ceil_mode))
        ones = torch.ones(1, 1, *self.shape[2:], dtype=torch.int64)
        counts = ring.sliding_windows(ones, kernel_size, stride, padding, 1, 0, ceil_mode).sum(-1)
        if count_include_pad:
            kh, kw = ring.pair(kernel_size, 2)
            counts = torch.minimum(torch.full_like(counts, kh * kw),
                                   ring.sliding_windows(torch.ones(1, 1, *[d + 2 * p for d, p in zip(
                                       self.shape[2:], ring.pair(padding, 2))], dtype=torch.int64),
                                       kernel_size, stride, 0, 1, 0, ceil_mode).sum(-1))
        return total.div(counts[0, 0].to(torch.float64))

    # -- nonlinear functions (methods, domains and errors: approximations.ERROR_BOUNDS) -----------
    def _approximation(self, op: Op, function=None, **ctx) -> "MPCTensor":
        """op by approximations.<op> (or `function`), recorded; a pending result stays so."""
        result = (function or getattr(approximations, op.value))(self.session, self.share, **ctx)
        share, pending = result if isinstance(result, tuple) else (result, 0)
        return record(op, self._new(share, pending=pending), (self,), **ctx)

    def exp(self) -> "MPCTensor":
        """e^self."""
        return self._approximation(Op.EXP)

    def _exp_wide(self) -> "MPCTensor":
        """e^self, about 0 (not garbage) down to -710: 3 rounds more than exp()."""
        return self._approximation(Op.EXP, approximations.exp_wide)

    def log(self) -> "MPCTensor":
        """Natural logarithm (self > 0)."""
        return self._approximation(Op.LOG)

    def reciprocal(self) -> "MPCTensor":
        """1 / self (self != 0)."""
        return self._approximation(Op.RECIPROCAL)

    def sqrt(self) -> "MPCTensor":
        """Square root (self >= 0)."""
        return self._approximation(Op.SQRT)

    def inv_sqrt(self) -> "MPCTensor":
        """1 / sqrt(self) (self > 0)."""
        return self._approximation(Op.INV_SQRT)

    def rsqrt(self) -> "MPCTensor":
        """inv_sqrt(), under torch's name."""
        return self.inv_sqrt()

    def sigmoid(self) -> "MPCTensor":
        """1 / (1 + e^-self)."""
        return self._approximation(Op.SIGMOID)

    def tanh(self) -> "MPCTensor":
        """Hyperbolic tangent."""
        return self._approximation(Op.TANH)

    def erf(self) -> "MPCTensor":
        """The error function."""
        return self._approximation(Op.ERF)

    def gelu(self) -> "MPCTensor":
        """x * Phi(x), the exact (erf) GELU: a polynomial between -4 and 4, relu outside."""
        share, pending, inside = approximations.gelu_parts(self.session, self.share)
        return record(Op.GELU, self._new(share, pending=pending), (self,), inside=inside)

    def softmax(self, dim: int) -> "MPCTensor":
        """e^x / sum(e^x) along dim."""
        return self._approximation(Op.SOFTMAX, dim=dim)

    def log_softmax(self, dim: int) -> "MPCTensor":
        """log(softmax(dim))."""
        share, pending, probs = approximations.log_softmax_parts(self.session, self.share, dim)
        return record(Op.LOG_SOFTMAX, self._new(share, pending=pending), (self,), dim=dim,
                      probs=probs)

    # -- operators ---------------------------------------------------------------------
    def __lt__(self, other: MPCTensor | Public) -> MPCTensor: return self.lt(other)
    def __le__(self, other: MPCTensor | Public) -> MPCTensor: return self.le(other)
    def __gt__(self, other: MPCTensor | Public) -> MPCTensor: return self.gt(other)
    def __ge__(self, other: MPCTensor | Public) -> MPCTensor: return self.ge(other)
    def __eq__(self, other: MPCTensor | Public) -> MPCTensor:  # type: ignore[override]  # private, as torch
        return self.eq(other)

    def __ne__(self, other: MPCTensor | Public) -> MPCTensor:  # type: ignore[override]
        return self.ne(other)

    __hash__ = object.__hash__

    def __bool__(self) -> NoReturn:
        raise TypeError("the truth value of a private tensor is secret; decrypt() it first")

    def __add__(self, other: MPCTensor | Public) -> MPCTensor: return self.add(other)
    def __radd__(self, other: MPCTensor | Public) -> MPCTensor: return self.add(other)
    def __sub__(self, other: MPCTensor | Public) -> MPCTensor: return self.sub(other)
    def __rsub__(self, other: MPCTensor | Public) -> MPCTensor: return self.neg().add(other)
    def __neg__(self) -> MPCTensor: return self.neg()
    def __mul__(self, other: MPCTensor | Public) -> MPCTensor: return self.mul(other)
    def __rmul__(self, other: MPCTensor | Public) -> MPCTensor: return bilinear(Op.MUL, other, self)
    def __matmul__(self, other: MPCTensor | Public) -> MPCTensor: return self.matmul(other)
    def __rmatmul__(self, other: MPCTensor | Public) -> MPCTensor: return bilinear(Op.MATMUL, other, self)
    def __truediv__(self, other: MPCTensor | Public) -> MPCTensor: return self.div(other)
    def __rtruediv__(self, other: MPCTensor | Public) -> MPCTensor: return self.reciprocal().mul(other)

    # -- shape operations (local on every share) ----------------------------------------------
    def _reshaped(self, data: torch.Tensor) -> "MPCTensor":
        return record(Op.RESHAPE, self._like(data), (self,), shape=self.shape)

    def reshape(self, *shape: int | Sequence[int]) -> "MPCTensor":
        """The same elements in another shape (ints, or one sequence of them)."""
        return self._reshaped(self._data.reshape(*shape))

    def view(self, *shape: int | Sequence[int]) -> "MPCTensor":
        """reshape(), under torch's name."""
        return self._reshaped(self._data.view(*shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "MPCTensor":
        """Dimensions start_dim..end_dim merged into one."""
        return self._reshaped(self._data.flatten(start_dim, end_dim))

    def squeeze(self, dim: Dims | None = None) -> "MPCTensor":
        """Size-1 dimensions removed (all, or those in dim)."""
        return self._reshaped(self._data.squeeze() if dim is None else self._data.squeeze(dim))

    def unsqueeze(self, dim: int) -> "MPCTensor":
        """A size-1 dimension inserted at dim."""
        return self._reshaped(self._data.unsqueeze(dim))

    def transpose(self, dim0: int, dim1: int) -> "MPCTensor":
        """dim0 and dim1 swapped."""
        out = self._like(self._data.transpose(dim0, dim1))
        return record(Op.TRANSPOSE, out, (self,), dim0=dim0, dim1=dim1)

    def t(self) -> "MPCTensor":
        """The transpose of a 2-d tensor (a copy of a 0-d or 1-d one)."""
        return self.transpose(0, 1) if self.dim() == 2 else self.clone()

    @property
    def T(self) -> "MPCTensor":
        """All dimensions reversed."""
        return self.permute(*reversed(range(self.dim())))

    def permute(self, *dims: int | Sequence[int]) -> "MPCTensor":
        """Dimensions reordered (ints, or one sequence of them)."""
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return record(Op.PERMUTE, self._like(self._data.permute(*dims)), (self,), dims=dims)

    def expand(self, *sizes: int | Sequence[int]) -> "MPCTensor":
        """Size-1 dimensions broadcast to sizes (-1 keeps a dimension)."""
        return record(Op.EXPAND, self._like(self._data.expand(*sizes)), (self,), shape=self.shape)

    def expand_as(self, other: MPCTensor | torch.Tensor) -> "MPCTensor":
        """expand() to other's shape."""
        return self.expand(other.shape)

    def repeat(self, *sizes: int | Sequence[int]) -> "MPCTensor":
        """Tiled copies along each dimension (not differentiable: use expand())."""
        if self.requires_grad:
            raise NotImplementedError("repeat() of a tensor that requires grad; use expand()")
        return self._like(self._data.repeat(*sizes))

    def narrow(self, dim: int, start: int, length: int) -> "MPCTensor":
        """Elements start..start+length-1 along dim."""
        index = [slice(None)] * self.dim()
        index[dim] = slice(start, start + length)
        return self[tuple(index)]

    def flip(self, dims: Dims) -> "MPCTensor":
        """Order reversed along dims."""
        return record(Op.FLIP, self._like(self._data.flip(dims)), (self,), dims=dims)

    # -- index operations (public indices, local on every share) ------------------------------
    def _index(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {index.dtype}")
        return index.to(torch.int64).to(self._data.device)

    def _source(self, src: "MPCTensor | Public", shape) -> tuple[torch.Tensor, torch.Tensor, Any, int]:
        """(self's data, src's data at one scale, src as recorded, that scale's pending): a
        private src aligned with self, a public one (or a number, filled to shape) encoded
        at self's scale by party 0 (0 elsewhere)."""
        if isinstance(src, MPCTensor):
            src = self._coerce(src)
            (a, b), pending = aligned([self, src])
            return a, b, src, pending
        p = self._public(src)
        p = torch.full(tuple(shape), float(p), dtype=torch.float64) if p.dim() == 0 else p
        enc = self._public_share(p, pending=self._pending)
        return self._data, enc, p, self._pending

    def gather(self, dim: int, index: torch.Tensor) -> "MPCTensor":
        """torch.gather with a public index: out[i][j] = self[index[i][j]][j] (dim 0)."""
        index = self._index(index)
        out = self._like(self._data.gather(dim, index))
        return record(Op.GATHER, out, (self,), dim=dim, index=index)

    def scatter(self, dim: int, index: torch.Tensor, src: "MPCTensor | Public") -> "MPCTensor":
        """torch.scatter (out of place) with a public index; src private, public or a number."""
        index = self._index(index)
        a, b, src, pending = self._source(src, index.shape)
        out = self._new(a.scatter(dim, index, b), pending=pending)
        return record(Op.SCATTER, out, (self, src), dim=dim, index=index)

    def scatter_add(self, dim: int, index: torch.Tensor, src: "MPCTensor | Public") -> "MPCTensor":
        """torch.scatter_add (out of place) with a public index; src private or public."""
        index = self._index(index)
        a, b, src, pending = self._source(src, index.shape)
        out = self._new(a.scatter_add(dim, index, b), pending=pending)
        return record(Op.SCATTER_ADD, out, (self, src), dim=dim, index=index)

    def index_select(self, dim: int, index: torch.Tensor) -> "MPCTensor":
        """The entries at a public 1-d index along dim (repeats allowed)."""
        index = self._index(index).reshape(-1)
        out = self._like(self._data.index_select(dim, index))
        return record(Op.INDEX_SELECT, out, (self,), dim=dim, index=index)

    def index_add(self, dim: int, index: torch.Tensor, source: "MPCTensor | Public",
                  alpha: float = 1) -> "MPCTensor":
        """torch.index_add (out of place): self with alpha * source's slices added at a public
        1-d index along dim (repeats accumulate)."""
        index = self._index(index).reshape(-1)
        if alpha != 1:
            source = source * alpha if isinstance(source, MPCTensor) else torch.as_tensor(source) * alpha
        a, b, source, pending = self._source(source, ())
        out = self._new(a.index_add(dim, index, b), pending=pending)
        return record(Op.INDEX_ADD, out, (self, source), dim=dim, index=index)

    def take(self, index: torch.Tensor) -> "MPCTensor":
        """The entries at a public index into the flattened tensor, in index's shape."""
        index = self._index(index)
        flat = index.reshape(-1) % max(self.numel(), 1)
        return self.reshape(-1).index_select(0, flat).reshape(index.shape)

    def roll(self, shifts: int | Sequence[int], dims: Dims | None = None) -> "MPCTensor":
        """Elements shifted cyclically along dims (the flattened tensor if None), as torch.roll."""
        shifts = shifts if isinstance(shifts, int) else tuple(shifts)
        dims = dims if dims is None or isinstance(dims, int) else tuple(dims)
        out = self._like(self._data.roll(shifts, dims))
        return record(Op.ROLL, out, (self,), shifts=shifts, dims=dims)

    def unfold(self, dimension: int, size: int, step: int) -> "MPCTensor":
        """Every window of `size` elements `step` apart along dimension, in a new last
        dimension (as torch.Tensor.unfold): an index_select of the windows' positions."""
        d = dimension % self.dim()
        windows = (self.shape[d] - size) // step + 1
        if size < 1 or step < 1 or windows < 1:
            raise ValueError(f"unfold: size {size}, step {step} for dimension of {self.shape[d]}")
        positions = (torch.arange(windows) * step).unsqueeze(1) + torch.arange(size)
        picked = self.index_select(d, positions.reshape(-1))
        picked = picked.reshape(*self.shape[:d], windows, size, *self.shape[d + 1:])
        return picked.movedim(d + 1, -1)

    def unbind(self, dim: int = 0) -> tuple["MPCTensor", ...]:
        """The slices along dim, that dim removed."""
        d = dim % self.dim()
        return tuple(self[(slice(None),) * d + (i,)] for i in range(self.shape[d]))

    def select(self, dim: int, index: int) -> "MPCTensor":
        """The slice at index along dim, that dim removed."""
        return self[(slice(None),) * (dim % self.dim()) + (index,)]

    def contiguous(self) -> "MPCTensor":
        """self (shares are always usable as they are)."""
        return self

    def clone(self) -> "MPCTensor":
        """A copy of the shares, on the graph."""
        return self._reshaped(self._data.clone())

    def split(self, split_size: int | Sequence[int], dim: int = 0) -> list["MPCTensor"]:
        """Pieces along dim: of split_size each (the last smaller), or of the given sizes."""
        sizes = ([split_size] * (self.shape[dim] // split_size) + (
            [self.shape[dim] % split_size] if self.shape[dim] % split_size else [])
            if isinstance(split_size, int) else list(split_size))
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [self.narrow(dim, s, n) for s, n in zip(starts, sizes)]

    def chunk(self, chunks: int, dim: int = 0) -> list["MPCTensor"]:
        """At most `chunks` pieces of equal size (the last smaller) along dim."""
        return self.split(-(-self.shape[dim] // chunks), dim)

    def pad(self, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> "MPCTensor":
        """torch.nn.functional.pad: 'constant' (value), or 'reflect', 'replicate' and
        'circular', which are public re-indexings of the shares (index_select per dim)."""
        if mode in ("reflect", "replicate", "circular"):
            return self._pad_by_index(tuple(pad), mode)
        if mode != "constant":
            raise ValueError(f"unknown pad mode {mode!r}; choose constant, reflect, replicate "
                             "or circular")
        fill = int(encode(value, self._bits + self._pending)) if self.session.rank == 0 else 0
        out = self._like(F.pad(self._data, tuple(pad), value=fill))
        return record(Op.PAD, out, (self,), pad=tuple(pad), value=value)

    def _pad_by_index(self, pad: tuple[int, ...], mode: str) -> "MPCTensor":
        """Non-constant padding, the last dim first (pairs of pad as torch's): each padded
        dim re-indexed by a public index into its entries."""
        if len(pad) % 2 or len(pad) // 2 > self.dim():
            raise ValueError(f"pad {pad} does not fit a {self.dim()}-d tensor")
        out = self
        for i in range(len(pad) // 2):
            dim, (lo, hi) = self.dim() - 1 - i, pad[2 * i:2 * i + 2]
            n = self.shape[dim]
            limit = {"reflect": n - 1, "circular": n}.get(mode)  # replicate: any size
            if not n or min(lo, hi) < 0 or (limit is not None and max(lo, hi) > limit):
                raise ValueError(f"{mode} padding {(lo, hi)} of a dim of size {n}: pads must be "
                                 f"non-negative{'' if limit is None else f' and at most {limit}'}"
                                 " on a non-empty dim")
            at = torch.arange(-lo, n + hi)
            if mode == "reflect":
                at = torch.where(at < 0, -at, torch.where(at >= n, 2 * (n - 1) - at, at))
            elif mode == "replicate":
                at = at.clamp(0, n - 1)
            else:
                at = at % n
            out = out.index_select(dim, at.to(self.device))
        return out

    def __getitem__(self, index: Any) -> "MPCTensor":
        return record(Op.GETITEM, self._like(self._data[index]), (self,), index=index)

    def __setitem__(self, index: Any, value: MPCTensor | Public) -> None:
        self._drop_masks()
        if isinstance(value, MPCTensor):
            self.share[index] = self._coerce(value).share
        else:
            self.share[index] = self._public_share(value)

    def bernoulli(self) -> "MPCTensor":
        """Private 0/1 draws with probabilities self (in [0, 1]), as torch.bernoulli: see
        mpc_ml.bernoulli."""
        return bernoulli(self)

    # -- in-place ops: the result assigned into self, as set_ does ----------------------------
    def _in_place(self, method: str, *args: Any, **kwargs: Any) -> "MPCTensor":
        """self = self.<method>(*args) in place, as torch's `<method>_`: self's shares are
        replaced (set_), not written into the storage a view shares. Under grad mode the
        op is recorded on a stand-in for self's old value, so backward routes through it;
        a leaf that requires grad is refused, as torch; backward through an op recorded
        before the change is refused (the version count), as torch."""
        if tape.is_grad_enabled() and self.requires_grad and self.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation (wrap it in mpc.no_grad(), as for an optimizer step)")
        old = self._new(self._data, self.dtype, self._pending)
        old.requires_grad, old.grad_fn, old._version = self.requires_grad, self.grad_fn, self._version
        args = tuple(old if a is self else a for a in args)
        out = getattr(old, method)(*args, **kwargs)
        self._data, self._pending, self._riding = out._data, out._pending, None
        self._drop_masks()
        self._version += 1
        if tape.is_grad_enabled():
            self.requires_grad, self.grad_fn = out.requires_grad, out.grad_fn
        return self

    def add_(self, other: MPCTensor | Public, *, alpha: float = 1) -> "MPCTensor":
        """self += alpha * other, in place."""
        return self._in_place("add", other if alpha == 1 else other * alpha)

    def sub_(self, other: MPCTensor | Public, *, alpha: float = 1) -> "MPCTensor":
        """self -= alpha * other, in place."""
        return self._in_place("sub", other if alpha == 1 else other * alpha)

    def mul_(self, other: MPCTensor | Public) -> "MPCTensor":
        """self *= other, in place."""
        return self._in_place("mul", other)

    def div_(self, other: MPCTensor | Public) -> "MPCTensor":
        """self /= other, in place."""
        return self._in_place("div", other)

    def neg_(self) -> "MPCTensor":
        """self = -self, in place."""
        return self._in_place("neg")

    def abs_(self) -> "MPCTensor":
        """self = |self|, in place."""
        return self._in_place("abs")

    def square_(self) -> "MPCTensor":
        """self = self * self, in place."""
        return self._in_place("square")

    def pow_(self, exponent: int | float) -> "MPCTensor":
        """self = self ** exponent, in place (pow's exponents)."""
        return self._in_place("pow", exponent)

    def clamp_(self, min: Public | None = None, max: Public | None = None) -> "MPCTensor":
        """self = clamp(self, min, max), in place."""
        return self._in_place("clamp", min, max)

    def hardtanh_(self, min_val: float = -1.0, max_val: float = 1.0) -> "MPCTensor":
        """self = hardtanh(self), in place."""
        return self._in_place("hardtanh", min_val, max_val)

    def relu_(self) -> "MPCTensor":
        """self = relu(self), in place."""
        return self._in_place("relu")

    def sigmoid_(self) -> "MPCTensor":
        """self = sigmoid(self), in place."""
        return self._in_place("sigmoid")

    def tanh_(self) -> "MPCTensor":
        """self = tanh(self), in place."""
        return self._in_place("tanh")

    def exp_(self) -> "MPCTensor":
        """self = e^self, in place."""
        return self._in_place("exp")

    def log_(self) -> "MPCTensor":
        """self = log(self), in place."""
        return self._in_place("log")

    def sqrt_(self) -> "MPCTensor":
        """self = sqrt(self), in place."""
        return self._in_place("sqrt")

    def reciprocal_(self) -> "MPCTensor":
        """self = 1 / self, in place."""
        return self._in_place("reciprocal")

    def cos_(self) -> "MPCTensor":
        """self = cos(self), in place."""
        return self._in_place("cos")

    def sin_(self) -> "MPCTensor":
        """self = sin(self), in place."""
        return self._in_place("sin")

    def scatter_(self, dim: int, index: torch.Tensor, src: "MPCTensor | Public") -> "MPCTensor":
        """scatter(), in place."""
        return self._in_place("scatter", dim, index, src)

    def scatter_add_(self, dim: int, index: torch.Tensor, src: "MPCTensor | Public") -> "MPCTensor":
        """scatter_add(), in place."""
        return self._in_place("scatter_add", dim, index, src)

    def index_add_(self, dim: int, index: torch.Tensor, source: "MPCTensor | Public",
                   alpha: float = 1) -> "MPCTensor":
        """index_add(), in place."""
        return self._in_place("index_add", dim, index, source, alpha)

    def _filled(self, value: "MPCTensor | Public") -> "MPCTensor":
        """value broadcast to self's shape (a copy), on the graph when private."""
        if isinstance(value, MPCTensor):
            return self._coerce(value).expand(self.shape).clone()
        return self._new(self._public_share(value, self.shape))

    def copy_(self, src: "MPCTensor | Public") -> "MPCTensor":
        """self's values replaced by src's (broadcast), in place; the gradient goes to src."""
        return self._in_place("_filled", src)

    def fill_(self, value: float) -> "MPCTensor":
        """Every element set to a public value, in place."""
        return self._in_place("_filled", value)

    def zero_(self) -> "MPCTensor":
        """Every element set to 0, in place."""
        return self._in_place("_filled", 0.0)

    def set_(self, source: "MPCTensor") -> "MPCTensor":
        """Take source's shares in place (as torch's set_), pending truncation included."""
        self._data, self._pending, self._riding = source._data, source._pending, None
        self._drop_masks()
        return self

    def to(self, device: torch.device | str | int) -> "MPCTensor":
        """The same shares on another device (e.g. 'cuda')."""
        return self._like(self._data.to(device))

    def cpu(self) -> "MPCTensor":
        """to('cpu')."""
        return self.to("cpu")

    def cuda(self) -> "MPCTensor":
        """to('cuda')."""
        return self.to("cuda")


def bilinear(op: Op, x: MPCTensor | Public, y: MPCTensor | Public, *, record_as: Op | None = None,
             record_ctx: dict | None = None, **kwargs) -> MPCTensor:
    """op(x, y) for a bilinear op where at least one operand is private; recorded as op with
    kwargs, or as `record_as` with `record_ctx` (an op computed by a bilinear kernel, such as
    conv_transpose2d by conv2d_input)."""
    recorded, ctx = (op, kwargs) if record_as is None else (record_as, record_ctx or {})
    xp, yp = isinstance(x, MPCTensor), isinstance(y, MPCTensor)
    ref = x if xp else y
    session, bits = ref.session, ref._bits
    if xp and yp:
        y = x._coerce(y)
        dtype = _result_dtype(x.dtype, y.dtype)
        if op == Op.MUL:  # pending operands are truncated in the product's own opening
            # a square is x * x for the same MPCTensor (the same on every party), never two
            # tensors that happen to hold one share object (x.to(its own device) on one party)
            y_data = x._data if y is x else (y._data.view_as(y._data) if y._data is x._data
                                              else y._data)
            (z,) = lazy_products(session, [(x._data, x._pending, y_data, y._pending)])
        elif y._masks is not None and not (tape.is_grad_enabled() or tape.in_backward()):
            # fixed y in inference (not a training forward or backward): opened once
            version, opened = y._family[0], y._masks.get("opened")
            opened = opened[1] if opened and opened[0] == version else None
            settle([x] if opened else [x, y])
            z, made = fixed_mask_product(session, op, x.share, y._data, opened, **kwargs)
            y._masks["opened"] = (version, made)
        else:
            settle([x, y])
            z = beaver_product(session, op, x.share, y.share, **kwargs)
        return record(recorded, ref._new(z, dtype, pending=bits), (x, y), **ctx)
    private, public = (x, y) if xp else (y, x)
    p = private._public(public)
    force = session.config.force_limbs
    if _is_integral(p):  # exact and linear: a pending operand stays pending if it cannot grow
        if op != Op.MUL or (p.numel() and int(p.to(torch.int64).abs().max()) > 1):
            settle([private])  # a sum or a larger factor could pass the pending bound
        args = (private._data, p.to(torch.int64)) if xp else (p.to(torch.int64), private._data)
        out = private._like(ring.bilinear(op, *args, force, **kwargs))
    else:
        enc = encode(p, bits, device=private.device)
        args = (private.share, enc) if xp else (enc, private.share)
        out = private._new(ring.bilinear(op, *args, force, **kwargs), pending=bits)
    return record(recorded, out, (x, p) if xp else (p, y), **ctx)


def aligned(tensors: Sequence[MPCTensor]) -> tuple[list[torch.Tensor], int]:
    """The tensors' data at one scale (the highest pending; lower ones shifted up, exactly,
    with no communication), and that pending."""
    pending = max(t._pending for t in tensors)
    return [t._data << (pending - t._pending) if t._pending < pending else t._data
            for t in tensors], pending


def settle(tensors: Iterable[MPCTensor], now: bool = True) -> None:
    """Truncate every pending tensor among these in one round (nothing if none is), or,
    with now=False, queue their truncations to ride on the next opening of any kind."""
    waiting = [t for t in tensors if isinstance(t, MPCTensor) and t._pending]
    for t in waiting:
        t._settle_later()
    if waiting and now:
        flush_riders(waiting[0].session)


def _add_bias(out: MPCTensor, bias, nd: int) -> MPCTensor:
    if bias is None:
        return out
    shape = (1, -1) + (1,) * nd
    return out + (bias.reshape(*shape) if isinstance(bias, MPCTensor)
                  else torch.as_tensor(bias).reshape(shape))


def conv1d(input: MPCTensor | torch.Tensor, weight: MPCTensor | torch.Tensor,
           bias: MPCTensor | torch.Tensor | None = None, stride: ring.IntOrTuple = 1,
           padding: ring.Padding = 0, dilation: ring.IntOrTuple = 1, groups: int = 1) -> MPCTensor:
    """torch.nn.functional.conv1d where input and/or weight are private (a height-1 conv2d)."""
    if isinstance(padding, str):
        padding = ring.resolve_padding(padding, weight.shape[2:], ring.pair(dilation, 1),
                                        ring.pair(stride, 1), 1)
    out = conv2d(input.unsqueeze(2), weight.unsqueeze(2), None, (1, ring.pair(stride, 1)[0]),
                 (0, ring.pair(padding, 1)[0]), (1, ring.pair(dilation, 1)[0]), groups)
    return _add_bias(out.squeeze(2), bias, 1)


def conv2d(input: MPCTensor | torch.Tensor, weight: MPCTensor | torch.Tensor,
           bias: MPCTensor | torch.Tensor | None = None, stride: ring.IntOrTuple = 1,
           padding: ring.Padding = 0, dilation: ring.IntOrTuple = 1, groups: int = 1) -> MPCTensor:
    """torch.nn.functional.conv2d where input and/or weight are private."""
    if isinstance(padding, str):
        padding = ring.resolve_padding(padding, weight.shape[2:], ring.pair(dilation, 2),
                                        ring.pair(stride, 2), 2)
    out = bilinear(Op.CONV2D, input, weight, stride=ring.pair(stride, 2),
                    padding=ring.pair(padding, 2), dilation=ring.pair(dilation, 2), groups=groups)
    return _add_bias(out, bias, 2)


def encrypt(tensor: torch.Tensor | None, src: int = 0, shape: Sequence[int] | None = None,
            device: torch.device | str | None = None) -> MPCTensor:
    """Secret-share src's tensor among all parties (others pass None, optionally shape=)."""
    session = current()
    if isinstance(tensor, MPCTensor):
        raise TypeError("encrypt() got an MPCTensor; it is already private")
    bits = session.config.precision_bits
    value = None
    if session.rank == src:
        if tensor is None:
            raise ValueError(f"party {src} is the source of encrypt() and must pass a tensor")
        t = torch.as_tensor(tensor)
        if device is not None:
            t = t.to(device)
        value = encode(t, bits)
        tag = 1 if t.dtype == torch.float64 else 0
    else:
        tag = 0
        if tensor is not None:
            shape = tuple(torch.as_tensor(tensor).shape) if shape is None else shape
            device = device or torch.as_tensor(tensor).device
        if device is not None:
            value = torch.empty(0, dtype=torch.int64, device=device)
    share, tag = share_input(session, value, src, shape, tag)
    return MPCTensor(share, session, torch.float64 if tag == 1 else torch.get_default_dtype())


def _shares(items: Iterable, ref: MPCTensor | None = None) -> tuple[list[torch.Tensor], MPCTensor, int]:
    """The items' data at one scale (aligned), a private one of them, and that scale's pending."""
    items = list(items)
    ref = ref or next((t for t in items if isinstance(t, MPCTensor)), None)
    if ref is None:
        raise TypeError("need at least one MPCTensor")
    datas, pending = aligned([ref._coerce(t) for t in items])
    return datas, ref, pending


def cat(tensors: Sequence[MPCTensor | Public], dim: int = 0) -> MPCTensor:
    """torch.cat of private (and public) tensors."""
    tensors = list(tensors)
    shares, ref, pending = _shares(tensors)
    return record(Op.CAT, ref._new(torch.cat(shares, dim), pending=pending), tuple(tensors), dim=dim)


def stack(tensors: Sequence[MPCTensor | Public], dim: int = 0) -> MPCTensor:
    """torch.stack of private (and public) tensors."""
    tensors = list(tensors)
    shares, ref, pending = _shares(tensors)
    return record(Op.STACK, ref._new(torch.stack(shares, dim), pending=pending), tuple(tensors),
                  dim=dim)


def where(condition: MPCTensor | torch.Tensor, input: MPCTensor | Public,
          other: MPCTensor | Public) -> MPCTensor:
    """torch.where: a public bool condition selects shares locally; a private 0/1
    condition costs one product: other + condition * (input - other)."""
    if isinstance(condition, MPCTensor):
        return (condition * condition._coerce(input).sub(other)).add(other)
    cond = torch.as_tensor(condition).to(torch.bool)
    (a, b), ref, pending = _shares([input, other])
    out = ref._new(torch.where(cond.to(a.device), a, b), pending=pending)
    return record(Op.WHERE, out, (input, other), condition=cond)


def conv_transpose2d(input: MPCTensor | torch.Tensor, weight: MPCTensor | torch.Tensor,
                     bias: MPCTensor | torch.Tensor | None = None, stride: ring.IntOrTuple = 1,
                     padding: ring.IntOrTuple = 0, output_padding: ring.IntOrTuple = 0,
                     groups: int = 1, dilation: ring.IntOrTuple = 1) -> MPCTensor:
    """torch.nn.functional.conv_transpose2d where input and/or weight are private: the
    adjoint of conv2d(., weight) applied to input, one Beaver product of the operands' own
    sizes (the conv2d_input kernel that conv2d's backward uses; no zero-spread input).
    output_padding must be below stride (torch also allows it below dilation)."""
    stride, padding, output_padding, dilation = (ring.pair(v, 2) for v in (
        stride, padding, output_padding, dilation))
    if any(o >= s for o, s in zip(output_padding, stride)):
        raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller "
                         f"than stride {stride}")
    n, _, *size = input.shape
    kernel = weight.shape[2:]
    out = [(i - 1) * s - 2 * p + d * (k - 1) + o + 1
           for i, s, p, d, k, o in zip(size, stride, padding, dilation, kernel, output_padding)]
    geometry = dict(stride=list(stride), padding=list(padding), dilation=list(dilation), groups=groups)
    ctx = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
               groups=groups)
    result = bilinear(Op.CONV2D_INPUT, input, weight, input_shape=[n, weight.shape[1] * groups, *out],
                      record_as=Op.CONV_TRANSPOSE2D, record_ctx=ctx, **geometry)
    return _add_bias(result, bias, 2)


def conv_transpose1d(input: MPCTensor | torch.Tensor, weight: MPCTensor | torch.Tensor,
                     bias: MPCTensor | torch.Tensor | None = None, stride: ring.IntOrTuple = 1,
                     padding: ring.IntOrTuple = 0, output_padding: ring.IntOrTuple = 0,
                     groups: int = 1, dilation: ring.IntOrTuple = 1) -> MPCTensor:
    """torch.nn.functional.conv_transpose1d where input and/or weight are private (a height-1
    conv_transpose2d)."""
    def one(v: ring.IntOrTuple) -> tuple[int, int]:
        return (0, ring.pair(v, 1)[0])
    out = conv_transpose2d(input.unsqueeze(2), weight.unsqueeze(2), None,
                           (1, ring.pair(stride, 1)[0]), one(padding), one(output_padding), groups,
                           (1, ring.pair(dilation, 1)[0]))
    return _add_bias(out.squeeze(2), bias, 1)


# -- private randomness --------------------------------------------------------------------
def _size(size: tuple) -> tuple[int, ...]:
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size


def rand(*size: int | Sequence[int], device: torch.device | str | None = None) -> MPCTensor:
    """Private uniform values on [0, 1) that no party knows: the multiples of 2^-f there,
    each with probability 2^-f (mean (1 - 2^-f) / 2), f = precision_bits. The shares come
    from primitives.uniform_share (the parties' own f random bits XORed, then one B2A;
    protocols/random.toml): 1 round, ceil(numel f / 8) bytes to each peer, one dabits
    request.
    """
    session = current()
    return MPCTensor(uniform_share(session, _size(size), device), session)


IRWIN_HALL_TERMS = 12
"""randn sums this many private uniforms: variance 1 without scaling."""


def randn(*size: int | Sequence[int], device: torch.device | str | None = None,
          method: str = "irwin_hall") -> MPCTensor:
    """Private standard normal values that no party knows.

    method "irwin_hall" (default): the sum of 12 rand() values minus its mean 6 (1 - 2^-f),
    exact in the ring (no truncation, no approximation), in rand's one round (12 numel
    elements). Mean 0, variance 1 - 2^-2f, excess kurtosis -0.1 (normal: 0), support
    [-6, 6] (normal tails beyond 6 sigma: 2e-9); its CDF is within 2.4e-3 of the normal
    one everywhere (Irwin-Hall's own deviation for 12 terms, 2.34e-3; the 2^-f grid adds
    at most 2^-f).

    method "box_muller" (CrypTen's): sqrt(-2 log u1) (cos, sin)(2 pi u2) for u1 = 1 - rand()
    in (0, 1] and u2 = rand(), both halves used: the normal shape, up to log's and sqrt's
    errors (1e-3 relative), and tails cut at sqrt(2 f ln 2) = 4.71 (mass 2.5e-6 beyond);
    41 rounds for 2 parties (log, sqrt, one cossin, one product; KS distance 0.009 to
    the normal on 20000 draws).

    For Gaussian noise whose far tails matter (differential privacy) neither is a
    substitute for an exact sampler.
    """
    shape = _size(size)
    if method == "irwin_hall":
        total = rand(IRWIN_HALL_TERMS, *shape, device=device).sum(0)
        return total.sub(IRWIN_HALL_TERMS * (1 - 2.0 ** -total._bits) / 2)
    if method != "box_muller":
        raise ValueError(f"randn: method {method!r}; choose 'irwin_hall' or 'box_muller'")
    count = math.prod(shape)
    half = (count + 1) // 2
    u = rand(2, half, device=device)
    radius = (u[0].neg().add(1.0).log() * -2.0).sqrt()
    c, s = (u[1] * (2 * math.pi)).cossin()
    return (cat([c, s]) * cat([radius, radius]))[:count].reshape(shape)


def bernoulli(p: MPCTensor | Public) -> MPCTensor:
    """Private 0/1 draws, 1 with probability p (private or public, in [0, 1]), no party
    knowing the outcome: [rand() < p], one rand round and one comparison. P(1) =
    ceil(p 2^f) / 2^f, within 2^-f of p."""
    if isinstance(p, MPCTensor):
        return rand(p.shape, device=p.device).lt(p)
    p = torch.as_tensor(p, dtype=torch.float64)
    return rand(p.shape, device=p.device).lt(p)
