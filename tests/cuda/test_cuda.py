"""The models, the codec and graph construction on a CUDA device (skipped without one).

Run with ``pytest -m cuda`` on a machine with a GPU. Checks: forward + backward of the
``tiny`` and ``paper`` GLIC and GABIC models (paper at 256x256: an eval forward and one
training step), compress -> decompress on the device, and graph construction on the
device giving the CPU's graphs edge for edge for the same float64 feature map.
"""

import pytest
import torch

from gnn_lic.graph import AdaptiveDegree, GlobalGrid, LocalWindow, TopK, WindowPartition, build_graphs
from gnn_lic.models import create_model
from gnn_lic.models.entropy import entropy_arithmetic
from gnn_lic.training.losses import RateDistortionLoss
from gnn_lic.training.optim import configure_optimizers

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, h, w, generator=g), 5, stride=1, padding=2,
                                       count_include_pad=False)
    return (0.6 * x + 0.4 * torch.linspace(0, 1, w).view(1, 1, 1, w)).clamp(0, 1).to(CUDA)


def _model(name, size, seed=0):
    torch.manual_seed(seed)
    return create_model(name, size=size).to(CUDA)


def _loss(net, x):
    return RateDistortionLoss(0.0130, "mse", 0.1)(net(x), x, net)["loss"]


@pytest.mark.parametrize("name", ["glic", "gabic", "wacnn"])
def test_tiny_forward_backward(name):
    net = _model(name, "tiny")
    x = _images(2, 64, 96)
    out = net(x)
    assert out["x_hat"].shape == x.shape and out["x_hat"].device.type == "cuda"
    for lik in out["likelihoods"].values():
        assert lik.device.type == "cuda" and torch.isfinite(lik).all() and (lik > 0).all()
    _loss(net, x).backward()
    for pname, p in net.named_parameters():
        if pname.endswith("quantiles"):
            continue
        assert p.grad is not None and p.grad.device.type == "cuda", pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_paper_eval_forward_and_one_training_step(name):
    net = _model(name, "paper")
    x = _images(2, 256, 256, seed=1)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out["x_hat"].shape == x.shape and torch.isfinite(out["x_hat"]).all()
    y = out["likelihoods"]["y"]
    assert y.shape[-2:] == (16, 16) and torch.isfinite(y).all()

    net.train()
    opt, aux_opt = configure_optimizers(net, lr=1e-4, aux_lr=1e-3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = _loss(net, x)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for n, p in net.named_parameters() if not n.endswith("quantiles")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with_grad = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > len(grads) // 2
    opt.step()
    net.aux_loss().backward()
    aux_opt.step()
    params = dict(net.named_parameters())
    for n in with_grad:  # Adam moves every parameter whose gradient is not zero
        assert not torch.equal(params[n].detach(), before[n]), n


@pytest.mark.parametrize("name", ["glic", "gabic", "wacnn"])
def test_compress_decompress_roundtrip(name):
    net = _model(name, "tiny")
    # scale y and z so that untrained latents do not all round to zero
    net.g_a.register_forward_hook(lambda mod, inp, out: out * 30.0)
    lc = net.latent_codec
    lc.hyper.h_a.register_forward_hook(lambda mod, inp, out: out * 10.0)
    net.update(force=True)
    net.eval()
    x = _images(2, 72, 88, seed=2)
    with torch.no_grad():
        ref = net(x)["x_hat"].clamp(0, 1)
    enc = net.compress(x)
    dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert dec.device.type == "cuda" and dec.shape == x.shape
    # fixed-point entropy means (scheme w8: 8-bit weights): rounding apart from the float forward (a latent
    # may cross a step; experiments/gpu_check.py FORWARD_MEAN_ATOL)
    assert float((dec - ref).abs().mean()) < 5e-2
    with entropy_arithmetic(net, "fixed"):  # scheme fx16: the forward's means to their last bits
        enc16 = net.compress(x)
        dec16 = net.decompress(enc16["strings"], enc16["shape"])["x_hat"]
    assert float((dec16 - ref).abs().mean()) < 1e-2
    assert (dec[0] - dec[1]).abs().max() > 1e-3  # depends on the image
    from gnn_lic.models.base import pad_to_multiple

    with torch.no_grad():  # decoded latents are the encoder's, bit for bit, on the device
        lat = lc.compress(net.g_a(pad_to_multiple(x, net.pad_multiple)[0]))
        assert torch.equal(lat["y_hat"], lc.decompress(lat["strings"], lat["shape"])["y_hat"])


def _edges(graph):
    return torch.sort(graph.row.long() * graph.num_nodes + graph.col.long()).values.cpu()


@pytest.mark.parametrize("selector", [AdaptiveDegree(16, score="rms", iters=5), AdaptiveDegree(8, score=None),
                                      TopK(9)], ids=["adaptive-rms", "adaptive-uniform", "topk"])
def test_graphs_match_cpu_edge_for_edge(selector):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 40, 56, generator=g, dtype=torch.float64)
    csets = {"local": LocalWindow(8), "global": GlobalGrid(16), "window": WindowPartition(8)}
    cpu = build_graphs(x, csets, selector)
    gpu = build_graphs(x.to(CUDA), csets, selector)
    for name in csets:
        a, b = cpu[name], gpu[name]
        assert b.col.device.type == "cuda", name
        assert a.num_nodes == b.num_nodes and a.num_edges == b.num_edges, name
        assert torch.equal(a.crow, b.crow.cpu()), name  # same degree of every node
        assert torch.equal(_edges(a), _edges(b)), name
