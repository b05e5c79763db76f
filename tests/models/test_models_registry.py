"""Registry: every model is registered, buildable at every size, and bad names are rejected."""

import pytest
import torch

import gnn_lic.models as models
from gnn_lic.models import SIZES, create_model, list_models
from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.glic import GFA_KEYWORDS, GLIC_PRESETS, GFAConfig

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
    "gabic-keepall",
    "wacnn",
}


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_every_expected_model_is_registered():
    assert EXPECTED <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size", SIZES)
def test_builds_at_every_size(name, size, paper_model):
    net = paper_model(name) if size == "paper" else create_model(name, size=size)
    assert isinstance(net, PaddedCompressionModel)
    assert net.model_name == name and net.model_size == size
    assert net.model_config == {"name": name, "size": size}
    assert net.pad_multiple == 64
    assert _count(net) > 0


def test_sizes_grow(paper_model):
    for name in ("glic", "gabic", "wacnn"):
        counts = [_count(create_model(name, size=s)) for s in ("tiny", "small")] + [_count(paper_model(name))]
        assert counts == sorted(counts)


def test_paper_glic_matches_table2(paper_model):
    # GLIC Table 2: 67.20 M parameters
    n = _count(paper_model("glic")) / 1e6
    assert abs(n - 67.20) / 67.20 < 0.10, n


def test_paper_gabic_width(paper_model):
    net = paper_model("gabic")
    assert (net.N, net.M) == (192, 320)
    lc = net.latent_codec.y
    assert (lc.num_slices, lc.slice_channels, lc.max_support_slices) == (10, 32, 5)


def test_variants_differ_only_in_their_option():
    base = create_model("glic", size="tiny")
    for name, order in [("glic-local", "local"), ("glic-global", "global"), ("glic-reverse", "global-local")]:
        net = create_model(name, size="tiny")
        assert net.g_a.blocks[1].order == order
        assert _count(net) == _count(base)
    assert create_model("glic-knn", size="tiny").g_a.blocks[1].selector.score is None
    assert create_model("glic-score-entropy", size="tiny").g_s.blocks[0].selector.score == "entropy"
    assert create_model("gabic-keepall", size="tiny").g_a[4].selector.__class__.__name__ == "KeepAll"
    assert create_model("gabic", size="tiny").g_a[4].selector.k == 9


def test_wacnn_is_the_gabic_layout_with_shifted_window_blocks(paper_model):
    """Zou et al.'s model: window 8 / shift 4 at 1/4 resolution, 4 / 2 at 1/16, same four positions as GABIC."""
    from gnn_lic.nn import GraphWindowBlock, WindowAttentionBlock

    for size in ("tiny", "paper"):
        build = paper_model if size == "paper" else (lambda name: create_model(name, size="tiny"))
        wa, ga = build("wacnn"), build("gabic")
        assert (wa.N, wa.M) == (ga.N, ga.M)
        for tname in ("g_a", "g_s"):
            wt, gt = getattr(wa, tname), getattr(ga, tname)
            assert len(wt) == len(gt)
            for i, (wm, gm) in enumerate(zip(wt, gt)):
                if isinstance(gm, GraphWindowBlock):
                    assert isinstance(wm, WindowAttentionBlock), (tname, i)
                    assert wm.window == gm.window.size
                    assert wm.shift == wm.window // 2
                    (layer,) = wm.attention_layers()
                    assert layer.shift == wm.shift and layer.mlp is None
                    heads = layer.attn.heads
                    assert heads == 8 and layer.attn.relative_position_bias_table.shape == ((2 * wm.window - 1) ** 2, 8)
                else:
                    assert type(wm) is type(gm), (tname, i)
        assert [wa.g_a[4].window, wa.g_a[8].window, wa.g_s[0].window, wa.g_s[5].window] == [8, 4, 4, 8]
        assert [wa.g_a[4].shift, wa.g_a[8].shift, wa.g_s[0].shift, wa.g_s[5].shift] == [4, 2, 2, 4]
        # the entropy models are the same network
        ws = {k: v.shape for k, v in wa.latent_codec.state_dict().items()}
        gs = {k: v.shape for k, v in ga.latent_codec.state_dict().items()}
        assert ws == gs
    pair = create_model("wacnn", size="tiny", swin_pair=True)
    assert [layer.shift for layer in pair.g_a[4].attention_layers()] == [0, 4]


def test_kwargs_override_presets_and_are_recorded():
    net = create_model("glic", size="tiny", wavelet=False, avg_degree=3)
    assert net.model_config == {"name": "glic", "size": "tiny", "wavelet": False, "avg_degree": 3}
    assert net.g_a.wavelet is None and net.g_a.blocks[1].selector.avg_degree == 3
    assert float(net.ortho_loss()) == 0.0


def test_glic_gfa_options_are_one_config_recorded_field_by_field():
    """The GFA keywords of create_model form GLIC's GFAConfig; init_config (the identity) lists its fields."""
    net = create_model("glic", size="tiny", local_window=3, heads=2)
    assert net.g_a.blocks[1].local.size == 3 and net.g_s.blocks[0].layers[0].conv.heads == 2
    args = net.init_config["args"]
    assert "gfa" not in args and set(GFA_KEYWORDS) <= set(args)
    assert (args["local_window"], args["heads"], args["global_grid"]) == (3, 2, GLIC_PRESETS["tiny"]["global_grid"])
    with pytest.raises(ValueError, match="keywords"):
        create_model("glic", size="tiny", gfa=GFAConfig())
    with pytest.raises(ValueError, match="local_rule"):
        create_model("glic", size="tiny", local_rule="nope")


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
        create_model("gabic-keepall", size="tiny", knn=9)
    with pytest.raises(TypeError):
        create_model("glic", size="tiny", no_such_option=1)


def test_import_registers_models():
    assert hasattr(models, "GLIC") and hasattr(models, "GABIC")
    assert torch.is_tensor(create_model("cnn", size="tiny").ortho_loss())
