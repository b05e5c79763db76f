"""Tiny CompressAI models registered under test names (helper for tests/codec).

:func:`register` adds them to the registry: in the tests through a registry scoped to each
test module (``tests/codec/conftest.py``), in ``python -m gnn_lic`` subprocesses through
``GNN_LIC_PLUGINS=codec_plugin``, so that the command line goes through ``create_model``
exactly as with a real model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.models import FactorizedPrior, ScaleHyperprior

from gnn_lic.models import list_models, register_model

HYPER = "codec_test_hyper"
FACT = "codec_test_fact"
WIDTH = {"tiny": 8, "small": 12, "paper": 16}


class _PadMixin:
    """Pads the input to a multiple of 64; ``out_mode`` says what decompress returns.

    ``"crop"``: the original size (taken from the shape dict), ``"padded"``: the padded
    reconstruction (the codec must crop it), ``"short"``: one row too few (an error).
    """

    out_mode = "crop"

    def compress(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % 64, (-w) % 64
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out = super().compress(x)
        return {"strings": out["strings"], "shape": {"latent": out["shape"], "hw": [h, w]}}

    def decompress(self, strings, shape):
        out = super().decompress(strings, shape["latent"])
        h, w = shape["hw"]
        x_hat = out["x_hat"]
        if self.out_mode == "crop":
            x_hat = x_hat[..., :h, :w]
        elif self.out_mode == "short":
            x_hat = x_hat[..., : h - 1, :w]
        return {"x_hat": x_hat}


class TinyHyperprior(_PadMixin, ScaleHyperprior):
    pass


class TinyFactorized(_PadMixin, FactorizedPrior):
    pass


def _builder(cls):
    def build(size="tiny", seed=0, out_mode="crop"):
        n = WIDTH[size]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = cls(N=n, M=n)
        with torch.no_grad():  # untrained weights give latents that all round to 0: amplify
            net.g_a[-1].weight.mul_(40.0)
            if hasattr(net, "h_a"):
                net.h_a[-1].weight.mul_(20.0)
        net.out_mode = out_mode
        return net

    return build


def register() -> None:
    """Register the stand-ins (in whatever registry is current; the tests scope it)."""
    if HYPER not in list_models():
        register_model(HYPER)(_builder(TinyHyperprior))
    if FACT not in list_models():
        register_model(FACT)(_builder(TinyFactorized))


def make(name=HYPER, size="tiny", **kwargs):
    """create_model + update + eval, as the tests need it."""
    from gnn_lic.models import create_model

    net = create_model(name, size=size, **kwargs)
    net.update(force=True)
    net.eval()
    return net


def reseeded(seed, name=HYPER, size="tiny"):
    """:func:`make`'s model with the weights of ``make(seed=seed)``: other weights, the same configuration
    (as after training), updated."""
    net = make(name, size)
    net.load_state_dict(make(name, size, seed=seed).state_dict())
    net.update(force=True)
    return net
