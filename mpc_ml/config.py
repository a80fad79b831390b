"""One dataclass of knobs, passed explicitly to each party's session."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

PROTOCOL_VERSION = 2  # 2: seeds by key agreement, job ids, attestation, prefetch

TRUNCATION_METHODS = ("exact", "local")
COMPARISON_METHODS = ("circuit", "fss")
DEALER_ATTEST_MODES = ("none", "sim", "sgx")
PRG_ALGORITHMS = ("aes", "chacha20")


@dataclass(frozen=True)
class Config:
    """Settings every party must agree on (checked at the handshake) plus local limits."""

    precision_bits: int = 16
    """Fractional bits of the fixed-point encoding."""
    truncation: str = "exact"
    """'exact': dealer pair with the MSB trick, 1 round, error < 1 unit in the last place,
    never a wrap-around failure. 'local': SecureML local shift, 0 rounds, 2 parties only,
    fails catastrophically with probability about |x| * 2^(2f) / 2^63 per element."""
    comparison: str = "circuit"
    """How [x < 0] is computed (relu, max, every comparison). 'circuit': a carry tree on
    bit-sliced words, any n and provider (csa_rounds + 5 rounds). 'fss': a dealer-made
    distributed comparison function key (Boyle et al., EUROCRYPT 2021), 2 parties and
    provider 'dealer' only: 1 online round, about 1.5 KB of key per element from the
    dealer to each party (protocols/fss_comparison.toml)."""
    comm_timeout_s: float = 60.0
    """Every blocking receive gives up after this long, naming the silent peer."""
    connect_timeout_s: float = 30.0
    """How long a party keeps trying to reach peers that have not started listening yet."""
    max_frame_bytes: int = 1 << 30
    """A frame announcing a larger payload is refused before anything is allocated; below
    it, memory grows only as the payload's bytes arrive (a 1024 x 1024 matmul sends 8 MiB
    tensors; raise it for larger single tensors)."""
    dealer_idle_timeout_s: float = 3600.0
    """How long the dealer waits for the next request before giving up."""
    force_limbs: bool = False
    """Compute matmul/conv by the CUDA float64-limb kernels even on CPU (to test them)."""
    device: str = "cpu"
    """Where this party's correlations are made ('cpu', 'cuda', 'cuda:1'): its seeded
    draws (with prg='chacha20', on that device, no host round trip), tfp's products, and
    what a dealer sends, moved there once on arrival; a CUDA device also has what the
    peers and the dealer send received into pinned host memory. Local: parties may
    differ; a party refuses a device its torch does not have."""
    prg: str = "aes"
    """The keystream of every seeded draw: 'aes' (AES-128-CTR from `cryptography`, the
    fastest on a CPU; draws for a GPU tensor are made on the host and copied) or
    'chacha20' (core/chacha.py in torch integer ops: made on the tensor's device, no host
    round trip; what a GPU job should use). Agreed at the handshake, the dealer's too."""
    allow_insecure: bool = False
    """Let parties on non-loopback addresses run without TLS (shares then cross the network
    in the clear). Also MPC_ALLOW_INSECURE=1 or --allow-insecure."""
    job_id: str = ""
    """Names the job at a dealer that serves several (MPC_JOB_ID; mpc.run and `mpc-ml launch`
    pick a fresh one). Agreed at the handshake."""
    dealer_attest: str = "none"
    """The attestation of the dealer that mpc.run starts itself: none | sim | sgx
    (`mpc-ml dealer --attest` for a dealer started on its own)."""
    dealer_measurement: str | None = None
    """Pinned dealer measurement(s), hex, comma-separated (also MPC_DEALER_MEASUREMENT): a party
    refuses, before it uses any correlation, a dealer that does not attest one of them."""
    dealer_allowed_tcb: str = "UpToDate"
    """SGX TCB statuses (comma-separated) a party accepts from an attested dealer; any other
    is refused (fail closed). Name e.g. "UpToDate,SWHardeningNeeded" only deliberately."""
    validate: bool = False
    """Debugging only (it reveals everything): after every op, decrypt and compare with the
    same op in plaintext; the first op beyond its stated error bound raises ValidationError."""

    def __post_init__(self) -> None:
        if not 0 < self.precision_bits <= 30:
            raise ValueError(f"precision_bits must be in 1..30, got {self.precision_bits}")
        if self.truncation not in TRUNCATION_METHODS:
            raise ValueError(
                f"unknown truncation {self.truncation!r}; choose one of {TRUNCATION_METHODS}"
            )
        if self.comparison not in COMPARISON_METHODS:
            raise ValueError(f"unknown comparison {self.comparison!r}; choose one of "
                             f"{COMPARISON_METHODS}")
        if self.dealer_attest not in DEALER_ATTEST_MODES:
            raise ValueError(f"unknown dealer_attest {self.dealer_attest!r}; choose one of "
                             f"{DEALER_ATTEST_MODES}")
        if self.prg not in PRG_ALGORITHMS:
            raise ValueError(f"unknown prg {self.prg!r}; choose one of {PRG_ALGORITHMS}")
        if self.comm_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def agreed_fields(self) -> dict:
        """The fields that every party must hold identical values for."""
        return {"precision_bits": self.precision_bits, "truncation": self.truncation,
                "comparison": self.comparison, "validate": self.validate, "job": self.job_id,
                "prg": self.prg,
                "protocol_version": PROTOCOL_VERSION}

    @classmethod
    def from_env(cls, base: "Config | None" = None) -> "Config":
        """Apply MPC_PRECISION_BITS, MPC_TRUNCATION, MPC_COMPARISON, MPC_COMM_TIMEOUT_S,
        MPC_CONNECT_TIMEOUT_S, MPC_JOB_ID, MPC_DEALER_MEASUREMENT and MPC_ALLOW_INSECURE
        overrides."""
        cfg = base or cls()
        changes = {}
        if "MPC_PRECISION_BITS" in os.environ:
            changes["precision_bits"] = int(os.environ["MPC_PRECISION_BITS"])
        if "MPC_TRUNCATION" in os.environ:
            changes["truncation"] = os.environ["MPC_TRUNCATION"]
        if "MPC_COMPARISON" in os.environ:
            changes["comparison"] = os.environ["MPC_COMPARISON"]
        if "MPC_COMM_TIMEOUT_S" in os.environ:
            changes["comm_timeout_s"] = float(os.environ["MPC_COMM_TIMEOUT_S"])
        if "MPC_CONNECT_TIMEOUT_S" in os.environ:
            changes["connect_timeout_s"] = float(os.environ["MPC_CONNECT_TIMEOUT_S"])
        if os.environ.get("MPC_JOB_ID"):
            changes["job_id"] = os.environ["MPC_JOB_ID"]
        if os.environ.get("MPC_DEALER_ALLOWED_TCB"):
            changes["dealer_allowed_tcb"] = os.environ["MPC_DEALER_ALLOWED_TCB"]
        if os.environ.get("MPC_DEALER_MEASUREMENT"):
            changes["dealer_measurement"] = os.environ["MPC_DEALER_MEASUREMENT"]
        if os.environ.get("MPC_ALLOW_INSECURE", "").strip().lower() in ("1", "true", "yes"):
            changes["allow_insecure"] = True
        return cfg.replace(**changes) if changes else cfg
