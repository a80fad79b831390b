"""Private inference: in-party predict, a one-client server, a service for many outside
clients (serve_clients: batching, isolation, clean stop), and the client.

A model owner's weights and a client's input stay private; only the client learns the
output. Imports nn/, tensor/, primitives/, comm/ (the client connections) and the session.
"""
from .inference import (InferenceClient, InferenceError, demo_model, private_predict,
                        private_predict_batch, serve_client)
from .service import ServiceStats, serve_clients

__all__ = ["InferenceClient", "InferenceError", "demo_model", "private_predict",
           "private_predict_batch", "serve_client", "serve_clients", "ServiceStats"]
