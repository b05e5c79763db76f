"""GDN's training path (:mod:`gnn_lic.nn.gdn`): CompressAI's GDN and inverse GDN under autograd, gradients
included, and CompressAI's own forward wherever the path does not apply."""

import pytest
import torch
from compressai.layers import GDN as CompressAIGDN

from gnn_lic import compiled
from gnn_lic.models.layers import GDN

needs_compiled = pytest.mark.skipif(not compiled.enabled(), reason="the backward's passes are compiled loops")


def _pair(inverse: bool, channels: int = 12):
    torch.manual_seed(7)
    layer = GDN(channels, inverse=inverse)
    with torch.no_grad():  # off the initial identity-like parameters
        layer.gamma.add_(0.05 * torch.rand_like(layer.gamma))
        layer.beta.add_(0.2 * torch.rand_like(layer.beta))
    ref = CompressAIGDN(channels, inverse=inverse)
    ref.load_state_dict(layer.state_dict())
    return layer, ref.double()


def _rel(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@needs_compiled
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 1, 9)])
def test_training_gdn_is_compressais_with_its_gradients(inverse, shape):
    """On a channels-last map under autograd the layer takes the compiled backward: output and the gradients of
    the input, gamma and beta equal CompressAI's layer in float64 within float32 rounding."""
    layer, ref = _pair(inverse)
    x = torch.randn(shape[0], 12, *shape[1:]).to(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    assert type(y.grad_fn).__name__ == "_GDNBackward"
    g = torch.randn(y.shape)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64)
    y64.backward(g.double())
    assert _rel(y.detach(), y64.detach()) < 1e-6
    assert _rel(x.grad, x64.grad) < 1e-5
    assert _rel(layer.gamma.grad, ref.gamma.grad) < 1e-5
    assert _rel(layer.beta.grad, ref.beta.grad) < 1e-5


@needs_compiled
@pytest.mark.parametrize("inverse", [False, True])
def test_training_gdn_keeps_two_maps_for_its_backward(inverse):
    """The forward keeps the input and the normaliser for the backward, not ``x^2`` as well (made again there):
    two map-sized tensors between forward and backward, and the gradients of the path above."""
    layer, _ = _pair(inverse)
    x = torch.randn(2, 12, 6, 5).to(memory_format=torch.channels_last).requires_grad_()
    kept = []

    def pack(t):
        if t.shape == x.shape:
            kept.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    assert type(y.grad_fn).__name__ == "_GDNBackward" and len(set(kept)) == 2


def test_other_maps_take_compressais_forward():
    """NCHW maps, float64 maps and compiled loops off: CompressAI's forward under autograd, bit for bit."""
    layer, _ = _pair(False)
    ref = CompressAIGDN(12)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 12, 4, 5, requires_grad=True)
    assert torch.equal(layer(x), ref(x))
    previous = compiled.set_enabled(False)
    try:
        xl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        assert torch.equal(layer(xl), ref(xl))
    finally:
        compiled.set_enabled(previous)
    x64 = x.detach().double().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.equal(layer.double()(x64), ref.double()(x64))
