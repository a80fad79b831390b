"""Private inference: in-party predict, a server for outside clients, and the client.

A model owner's weights and a client's input stay private; only the client learns the
output. Imports nn/, tensor/, primitives/, comm/ (the client connections) and the session.
"""
from .inference import (InferenceClient, InferenceError, demo_model, private_predict,
                        private_predict_batch, serve_client)

__all__ = ["InferenceClient", "InferenceError", "demo_model", "private_predict",
           "private_predict_batch", "serve_client"]
