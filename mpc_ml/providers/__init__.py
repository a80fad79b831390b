"""Correlated randomness: Beaver triples, truncation masks, binary triples, daBits.

A provider gives each party its shares of every correlation, in program order: the
trusted first party (tests only) or a dealer (a separate process, the default).
Imports comm/ (the dealer's link) and core/; knows nothing of tensors or protocols.
A new provider is a Provider subclass and an entry in PROVIDERS.
"""
from .base import KINDS, Correlation, CorrelationGenerator, PrefetchDivergence, Provider
from .dealer import DealerProvider, serve_dealer
from .tfp import TrustedFirstParty

PROVIDERS: dict[str, type[Provider]] = {
    TrustedFirstParty.name: TrustedFirstParty,
    DealerProvider.name: DealerProvider,
}
"""Provider name -> class; the CLI's --provider choices and every job check read it."""

DEFAULT_PROVIDER = DealerProvider.name
"""Everywhere a provider is not named: a separate dealer. `tfp` runs only when named."""

__all__ = ["DEFAULT_PROVIDER", "KINDS", "PROVIDERS", "Correlation", "CorrelationGenerator", "DealerProvider",
           "PrefetchDivergence", "Provider", "TrustedFirstParty", "serve_dealer"]
