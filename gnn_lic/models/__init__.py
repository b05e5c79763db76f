"""Compression models (CompressAI contract) built on the graph core."""

from gnn_lic.models.registry import SIZES, create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "SIZES"]
