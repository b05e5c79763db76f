"""Shared helpers of the model tests: tiny models with non-trivial latents, RD losses."""

from __future__ import annotations

import torch

from gnn_lic.models import create_model


def hyper_analysis(net):
    """The ``h_a`` of the latent codec (a CompressAI hyperprior in every model)."""
    return net.latent_codec.hyper.h_a


def amplify(net, y_gain: float = 30.0, z_gain: float = 10.0):
    """Scale ``y`` and ``z`` with forward hooks so untrained latents do not all round to 0.

    Hooks leave the parameters (and the state dict) untouched.
    """
    net.g_a.register_forward_hook(lambda mod, inp, out: out * y_gain)
    hyper_analysis(net).register_forward_hook(lambda mod, inp, out: out * z_gain)
    return net


def make(name: str, seed: int = 0, size: str = "tiny", **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, size=size, **kwargs)


def rd_loss(net, out, x, lmbda: float = 0.01):
    """``bpp + lambda * 255^2 * mse + 0.1 * ortho`` (bpp over the original pixels)."""
    n, _, h, w = x.shape
    bpp = sum(-lik.log2().sum() for lik in out["likelihoods"].values()) / (n * h * w)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return bpp + lmbda * 255**2 * mse + 0.1 * net.ortho_loss()


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (a blurred noise field plus a gradient)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w)
    return (0.6 * x + 0.4 * ramp).clamp(0, 1)
