"""Registry: every model is registered, buildable at every size, and bad names are rejected."""

import pytest
import torch

import gnn_lic.models as models
from gnn_lic.models import SIZES, create_model, list_models
from gnn_lic.models.base import PaddedCompressionModel

EXPECTED = {
    "glic",
    "glic-local",
    "glic-global",
    "glic-reverse",
    "glic-score-mean",
    "glic-score-entropy",
    "glic-score-residual",
    "glic-score-residual-mean",
    "glic-knn",
    "cnn",
    "gabic",
    "wacnn",
}


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_every_expected_model_is_registered():
    assert EXPECTED <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size", SIZES)
def test_builds_at_every_size(name, size):
    net = create_model(name, size=size)
    assert isinstance(net, PaddedCompressionModel)
    assert net.model_name == name and net.model_size == size
    assert net.model_config == {"name": name, "size": size}
    assert net.pad_multiple == 64
    assert _count(net) > 0


def test_sizes_grow():
    for name in ("glic", "gabic"):
        counts = [_count(create_model(name, size=s)) for s in ("tiny", "small", "paper")]
        assert counts == sorted(counts)


def test_paper_glic_matches_table2():
    # GLIC Table 2: 67.20 M parameters
    n = _count(create_model("glic", size="paper")) / 1e6
    assert abs(n - 67.20) / 67.20 < 0.10, n


def test_paper_gabic_width():
    net = create_model("gabic", size="paper")
    assert (net.N, net.M) == (192, 320)
    lc = net.latent_codec
    assert (lc.num_slices, lc.slice_channels, lc.max_support_slices) == (10, 32, 5)


def test_variants_differ_only_in_their_option():
    base = create_model("glic", size="tiny")
    for name, order in [("glic-local", "local"), ("glic-global", "global"), ("glic-reverse", "global-local")]:
        net = create_model(name, size="tiny")
        assert net.g_a.blocks[1].order == order
        assert _count(net) == _count(base)
    assert create_model("glic-knn", size="tiny").g_a.blocks[1].selector.score is None
    assert create_model("glic-score-entropy", size="tiny").g_s.blocks[0].selector.score == "entropy"
    assert create_model("wacnn", size="tiny").g_a[4].selector.__class__.__name__ == "KeepAll"
    assert create_model("gabic", size="tiny").g_a[4].selector.k == 9


def test_kwargs_override_presets_and_are_recorded():
    net = create_model("glic", size="tiny", wavelet=False, avg_degree=3)
    assert net.model_config == {"name": "glic", "size": "tiny", "wavelet": False, "avg_degree": 3}
    assert net.g_a.aux is None and net.g_a.blocks[1].selector.avg_degree == 3
    assert float(net.ortho_loss()) == 0.0


def test_create_model_rejects_unknown_names_and_sizes():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("glic-nonexistent", size="tiny")
    with pytest.raises(ValueError, match="unknown size"):
        create_model("glic", size="huge")
    with pytest.raises(ValueError, match="unknown size"):
        create_model("gabic", size="")


def test_variant_options_cannot_be_overridden():
    with pytest.raises(ValueError, match="fixes"):
        create_model("glic-local", size="tiny", order="global")
    with pytest.raises(ValueError, match="fixes"):
        create_model("wacnn", size="tiny", knn=9)
    with pytest.raises(TypeError):
        create_model("glic", size="tiny", no_such_option=1)


def test_import_registers_models():
    assert hasattr(models, "GLIC") and hasattr(models, "GABIC")
    assert torch.is_tensor(create_model("cnn", size="tiny").ortho_loss())
