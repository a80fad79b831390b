"""Shims that let CrypTen 0.4.1 import and run on torch 2.13 (used only by
benchmarks/crypten_runner.py, inside the CrypTen virtualenv; see benchmarks/README.md).

1. `import crypten` imports torch.onnx._internal.registration, which torch moved to
   torch.onnx._internal.torchscript_exporter.registration: alias the old name.
2. crypten.nn.from_pytorch exports through torch.onnx.export, which must be called with
   dynamo=False on torch 2.13: default it so.
"""
import importlib
import sys


def apply() -> None:
    import torch
    import torch.onnx

    old = "torch.onnx._internal.registration"
    if old not in sys.modules:
        try:
            importlib.import_module(old)
        except ImportError:
            sys.modules[old] = importlib.import_module(
                "torch.onnx._internal.torchscript_exporter.registration")
    export = torch.onnx.export
    if not getattr(export, "_mpcb_shim", False):
        def export_no_dynamo(*args, **kwargs):
            kwargs.setdefault("dynamo", False)
            return export(*args, **kwargs)
        export_no_dynamo._mpcb_shim = True
        torch.onnx.export = export_no_dynamo
