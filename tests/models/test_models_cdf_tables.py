"""How far the shipped models' integer CDF tables depend on the machine's float math.

``update()`` (CompressAI) builds the tables at every load from float32 math: ``erfc`` for
the Gaussian conditional's CDFs and ``exp`` for its scale table; ``softplus``, ``tanh``,
``sigmoid`` and small matrix products for the factorized prior's CDFs. These functions may
differ by an ulp between machines, and a decoder whose tables differ from the encoder's is
refused by the identity check (the tables are part of the model identity). The tests pin which
one-ulp changes the tables absorb (a property of the weights: a rounding decision with no
margin moves an entry) and which they do not: the scale table is stored bit for bit, so one
ulp of ``exp`` changes it. That is why the shipped files store their tables and loading them
never calls ``update()``: the last test nudges every function while the shipped weights load,
and the tables stay those of the file.
"""

import pytest
import torch
import torch.nn.functional as F

from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import is_table_key
from gnn_lic.models.zoo import shipped_weights

pytestmark = pytest.mark.slow  # every case rebuilds the tables of a shipped model

SHIPPED = ["glic-small", "gabic-small"]
def _tables(net):
    return {k: v.clone() for k, v in net.state_dict().items() if is_table_key(k)}


#: functions whose results are never negative: one ulp of error cannot take an exact 0 (an
#: underflowed tail) below zero
_NON_NEGATIVE = {"erfc", "sigmoid", "softplus", "exp"}


def _nudged(fn, direction: float):
    def f(*args, **kwargs):
        out = fn(*args, **kwargs)
        moved = torch.nextafter(out, torch.full_like(out, direction))
        return moved.clamp(min=0) if fn.__name__ in _NON_NEGATIVE else moved

    return f


def _moved_by(net, reference, monkeypatch, functions, direction):
    with monkeypatch.context() as m:
        for module, attr in functions:
            m.setattr(module, attr, _nudged(getattr(module, attr), direction))
        net.update(force=True)
    moved = [k for k, v in _tables(net).items() if not torch.equal(v, reference[k])]
    net.update(force=True)
    return moved


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    name, size = request.param.rsplit("-", 1)
    if not shipped_weights(name, size):
        pytest.skip(f"{request.param} is not shipped here")
    net = create_model(name, size=size, pretrained=True)
    reference = _tables(net)
    assert reference and all(v.numel() for v in reference.values())
    return net, reference


@pytest.mark.parametrize("function", [(torch, "erfc"), (torch, "tanh"), (torch, "sigmoid"), (F, "softplus")],
                         ids=lambda f: f[1])
@pytest.mark.parametrize("direction", [float("inf"), float("-inf")], ids=["up", "down"])
def test_one_ulp_in_one_function_leaves_the_tables(shipped, function, direction, monkeypatch, request):
    net, reference = shipped
    if (net.model_name, function[1], direction) == ("glic", "sigmoid", float("inf")):
        # the glic-small shipped on 2026-12-03 (wavelet branch) has one entry of its hyper-prior
        # CDF table within an ulp of sigmoid of a rounding boundary; loading reads the stored table
        request.applymarker(pytest.mark.xfail(strict=True, reason="one hyper-prior CDF entry on a rounding boundary"))
    assert _moved_by(net, reference, monkeypatch, [function], direction) == []


@pytest.mark.xfail(strict=True, reason="the scale table is exp(linspace) in float32, kept bit for bit")
def test_one_ulp_of_exp_leaves_the_scale_table(shipped, monkeypatch):
    net, reference = shipped
    assert _moved_by(net, reference, monkeypatch, [(torch, "exp")], float("inf")) == []


def test_loading_the_shipped_weights_reads_their_tables(shipped, monkeypatch):
    net, reference = shipped
    name, size = net.model_name, net.model_size
    with monkeypatch.context() as m:
        for module, attr in [(torch, "exp"), (torch, "erfc"), (torch, "tanh"), (torch, "sigmoid"), (F, "softplus")]:
            m.setattr(module, attr, _nudged(getattr(module, attr), float("inf")))
        loaded = create_model(name, size=size, pretrained=True)
    tables = _tables(loaded)
    assert tables.keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in tables.items())
