"""Maps kept for the backward as the cheap step that made them (:mod:`gnn_lic.nn.recompute`): inside
``recomputed_saves`` a layer that keeps a marked map keeps its recipe; the output and every gradient are
those of the plain forward, bit for bit, and fewer maps live between forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnn_lic.models import create_model
from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.layers import GDN, ConvStack, conv_stack
from gnn_lic.nn.activations import gelu
from gnn_lic.nn.blocks import ResidualUnit
from gnn_lic.nn import recompute
from gnn_lic.nn.recompute import active, mark, recomputed_saves
from gnn_lic import compiled


def _kept(fn, numel, monkeypatch=None):
    """``fn()`` and the distinct storages of ``numel`` elements that autograd keeps for its backward; with
    ``monkeypatch``, inside ``recomputed_saves`` (tensors kept as a recipe do not count: their storages are
    not kept)."""
    kept = set()

    def count(t):
        if isinstance(t, torch.Tensor) and t.numel() == numel:
            kept.add(t.untyped_storage().data_ptr())
        return t

    if monkeypatch is None:
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            out = fn()
        return out, len(kept)
    pack = recomputed_saves._pack
    monkeypatch.setattr(recomputed_saves, "_pack", lambda self, t: count(pack(self, t)))
    with recomputed_saves():
        out = fn()
    monkeypatch.undo()
    return out, len(kept)


def _same_grads(got, want, g, tensors):
    for a, b in zip(torch.autograd.grad(got, tensors, g), torch.autograd.grad(want, tensors, g)):
        assert torch.equal(a, b)


def test_a_marked_map_is_kept_as_its_recipe_and_gives_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    c = torch.randn(2, 4, 6, 7, requires_grad=True)
    g = torch.randn(2, 5, 6, 7)
    plain = lambda: conv(gelu(c))  # noqa: E731
    want, kept_plain = _kept(plain, c.numel())
    got, kept = _kept(plain, c.numel(), monkeypatch)
    assert torch.equal(got, want) and (kept_plain, kept) == (2, 1)  # c and gelu(c), then c alone
    _same_grads(got, want, g, [c, conv.weight, conv.bias])


def test_recipes_rebuild_the_view_that_was_kept(monkeypatch):
    """A channels-last GELU output is a permuted view of an NHWC tensor; a layer keeps a narrowed view of it
    (another shape, strides and offset): the recipe gives that same view back (the gradients say so)."""
    torch.manual_seed(1)
    c = torch.randn(1, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(1, 2, 4, 3, requires_grad=True)
    recipes = []
    pack = recomputed_saves._pack
    monkeypatch.setattr(recomputed_saves, "_pack", lambda self, t: recipes.append(pack(self, t)) or recipes[-1])
    with recomputed_saves():
        h = gelu(c)  # alive while the product keeps its narrowed view
        a = (h[:, 1:, :, 2:] * w).sum()
    del h
    assert any(type(r).__name__ == "_Recipe" and r.offset > 0 for r in recipes)
    b = (gelu(c)[:, 1:, :, 2:] * w).sum()
    _same_grads(a, b, torch.tensor(1.0), [c, w])


def test_a_recipe_holds_only_while_its_tensor_lives():
    """Once a marked tensor is gone its memory may hold another tensor: nothing is kept as its recipe then."""
    x = torch.randn(64, requires_grad=True)
    with recomputed_saves() as ctx:
        h = mark(x * 2, torch.zeros, 64)
        assert type(ctx._pack(h)).__name__ == "_Recipe"
        same_memory = h.detach()  # the storage lives on, the marked tensor does not
        del h
        assert ctx._pack(same_memory) is same_memory


def test_mark_does_nothing_outside_the_context_or_without_autograd():
    assert active() is None
    x = torch.randn(3, requires_grad=True)
    out = x * 2
    assert mark(out, lambda: None) is out and active() is None
    with recomputed_saves() as outer, torch.no_grad():
        with recomputed_saves():
            assert active() is outer  # re-entrant: the outer context stays in force
        mark(out, lambda: None)
        assert not outer._recipes
    assert active() is None


@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_unit_keeps_two_half_width_maps_not_four(channels_last, monkeypatch):
    torch.manual_seed(1)
    unit = ResidualUnit(8)
    x = torch.randn(2, 8, 6, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(x.shape)
    want, kept_plain = _kept(lambda: unit(x), 2 * 4 * 6 * 5)
    got, kept = _kept(lambda: unit(x), 2 * 4 * 6 * 5, monkeypatch)
    assert torch.equal(got, want) and (kept_plain, kept) == (4, 2)
    _same_grads(got, want, g, [x, *unit.parameters()])


def test_conv_stack_keeps_the_gelu_inputs_only(monkeypatch):
    torch.manual_seed(2)
    stack = conv_stack([6, 8, 7, 3])
    assert isinstance(stack, ConvStack) and list(stack.state_dict()) == list(nn.Sequential(*stack).state_dict())
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    g = torch.randn(2, 3, 5, 5)
    want, kept_plain = _kept(lambda: stack(x), 2 * 8 * 25)
    got, kept = _kept(lambda: stack(x), 2 * 8 * 25, monkeypatch)
    assert torch.equal(got, want) and (kept_plain, kept) == (2, 1)
    _same_grads(got, want, g, [x, *stack.parameters()])


@pytest.mark.skipif(not compiled.enabled(), reason="GDN's training path is compiled")
@pytest.mark.parametrize("inverse", [False, True])
def test_a_gdn_output_is_kept_as_input_times_normaliser(inverse, monkeypatch):
    torch.manual_seed(3)
    gdn = GDN(6, inverse=inverse)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
    conv = nn.Conv2d(6, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 4, 5, 7)
    want, kept_plain = _kept(lambda: conv(gdn(x)), x.numel())
    got, kept = _kept(lambda: conv(gdn(x)), x.numel(), monkeypatch)
    assert torch.equal(got, want) and (kept_plain, kept) == (3, 2)  # x, r and the output; then x and r
    _same_grads(got, want, g, [x, gdn.gamma, gdn.beta, conv.weight])


@pytest.mark.parametrize("name,recipes_used", [("gabic", True), ("glic", False)])
def test_training_forward_of_a_model_gives_the_plain_gradients(name, recipes_used):
    """The models' forward under autograd runs in the context (GABIC's GELUs and GDNs keep recipes; GLIC has
    no marked step): loss and every parameter's gradient as without it."""
    torch.manual_seed(4)
    net = create_model(name, size="tiny").train()
    x = torch.rand(1, 3, 64, 64)

    def loss(out):
        return F.mse_loss(out["x_hat"], x) + sum(torch.log(v).sum() for v in out["likelihoods"].values()) * -1e-4

    params = [p for p in net.parameters() if p.requires_grad]
    recipes = []
    pack = recomputed_saves._pack

    def counting(self, t):
        kept = pack(self, t)
        recipes.append(kept is not t)
        return kept

    torch.manual_seed(5)  # the same training noise for both
    with pytest.MonkeyPatch.context() as m:
        m.setattr(recomputed_saves, "_pack", counting)
        got = loss(net(x))
    assert any(recipes) == recipes_used
    previous = recompute.set_enabled(False)  # switched off: every map kept
    try:
        recipes.clear()
        with pytest.MonkeyPatch.context() as m:
            m.setattr(recomputed_saves, "_pack", counting)
            net(x)
        assert not recipes
    finally:
        recompute.set_enabled(previous)
    torch.manual_seed(5)
    want = loss(PaddedCompressionModel._padded_forward(net, x, None))  # no context: every map kept
    assert torch.equal(got, want)
    _same_grads(got, want, torch.tensor(1.0), params)
