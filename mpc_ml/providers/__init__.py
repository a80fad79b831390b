"""Providers of correlated randomness: trusted first party (tests) and dealer."""
from .base import KINDS, Correlation, CorrelationGenerator, Provider
from .dealer import DealerProvider, serve_dealer
from .tfp import TrustedFirstParty

PROVIDERS = ("tfp", "dealer")

__all__ = ["KINDS", "PROVIDERS", "Correlation", "CorrelationGenerator", "DealerProvider",
           "Provider", "TrustedFirstParty", "serve_dealer"]
