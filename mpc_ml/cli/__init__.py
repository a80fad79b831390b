"""The `mpc-ml` command: launch | slurm | demo | dealer | certs | bench | infer.

argparse only: each subcommand parses its options and calls launch/ or serving/. Choices
(backends, providers) come from their registries. The top of the import graph.
"""
from .main import main

__all__ = ["main"]
