"""gnn_lic: graph neural networks for learned image compression (GLIC, GABIC)."""

__version__ = "0.1.0"
