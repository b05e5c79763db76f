"""gnn_lic: graph neural networks for learned image compression (GLIC, GABIC)."""

import warnings

__version__ = "0.1.0"

# CompressAI imports torch_geometric, whose import scripts functions with ``torch.jit.script``;
# torch deprecates that with a FutureWarning that every command would print and nobody here can act on
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
