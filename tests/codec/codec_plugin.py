"""``GNN_LIC_PLUGINS=codec_plugin``: registers the stand-in models in a ``python -m gnn_lic`` subprocess."""

import codec_testmodels

codec_testmodels.register()
