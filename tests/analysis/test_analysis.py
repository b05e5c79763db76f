"""gnn_lic.analysis against brute-force references on tiny inputs."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from gnn_lic.analysis import (
    analysis_images,
    average_erf,
    bit_allocation,
    bit_allocation_difference,
    quality_for_rate,
    center_crop,
    effective_receptive_field,
    erf_difference,
    erf_mass_area,
    graph_blocks,
    graph_stages,
    load_analysis_models,
    neighbours,
    stage_features,
)
from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import save_checkpoint


class LinearCodec(nn.Module):
    """g_a = one 3x3 conv (stride 1) then a 1x1 conv: its ERF is known in closed form."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.g_a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1))


def test_erf_of_linear_model_matches_closed_form():
    net = LinearCodec()
    x = torch.rand(1, 3, 9, 11)
    r, c = 4, 6
    erf = effective_receptive_field(net, x, positions=[(r, c)])[0, 0]
    # d(sum_k y_k[r, c]) / d x_ch[r + dy, c + dx] = sum_k sum_m W2[k, m] W1[m, ch, dy + 1, dx + 1]
    w = torch.einsum("km,mchw->chw", net.g_a[1].weight[:, :, 0, 0], net.g_a[0].weight).detach()
    ref = torch.zeros(9, 11)
    for dy, dx in itertools.product((-1, 0, 1), (-1, 0, 1)):
        ref[r + dy, c + dx] = sum(abs(float(w[ch, dy + 1, dx + 1])) for ch in range(3))
    torch.testing.assert_close(erf, ref, rtol=1e-5, atol=1e-6)


def test_erf_positions_default_centre_and_bounds():
    net = LinearCodec()
    x = torch.rand(2, 3, 8, 8)
    e = effective_receptive_field(net, x)
    assert e.shape == (2, 1, 8, 8)
    assert int(e[0, 0].argmax()) // 8 in (3, 4, 5)  # mass around the centre (4, 4)
    assert float(e[0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="outside"):
        effective_receptive_field(net, x, positions=[(8, 0)])


def test_stage_features_stop_at_intermediate_stage():
    net = create_model("cnn", size="tiny").eval()
    x = torch.rand(1, 3, 64, 64)
    calls = []
    h = net.g_a.down[3].register_forward_hook(lambda *a: calls.append(1))
    f = stage_features(net, x, "g_a.blocks.1")
    h.remove()
    assert f.shape[-2:] == (16, 16) and not calls  # stopped before the last down-sampling
    with torch.no_grad():
        ref = net.g_a.blocks[1](net.g_a.down[1](net.g_a.blocks[0](net.g_a.down[0](x))))
    if net.g_a.wavelet is None:
        torch.testing.assert_close(f, ref)
    with pytest.raises(ValueError, match="no module"):
        stage_features(net, x, "g_a.nope")


def test_erf_of_stage_is_local_for_cnn_and_global_for_glic():
    """A conv stage's ERF is zero outside its receptive field; GLIC's global graph reaches beyond it."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 128, 128)
    cnn = create_model("cnn", size="tiny").eval()
    glic = create_model("glic", size="tiny", wavelet=False).eval()
    e_cnn = effective_receptive_field(cnn, x, positions=[(4, 4)], stage="g_a.down.1")[0, 0]
    # node 4 of down[1] (3x3, stride 2) reads 1/2-res rows 7..9; the 5x5 depthwise conv of blocks[0]
    # widens that to 5..11; down[0] (3x3, stride 2) maps it to input rows 2*5-1 .. 2*11+1 = 9..23
    outside = e_cnn.clone()
    outside[9:24, 9:24] = 0
    assert float(e_cnn.sum()) > 0 and float(outside.abs().max()) == 0
    e_glic = effective_receptive_field(glic, x, positions=[(4, 4)], stage="g_a.blocks.1")[0, 0]
    far = e_glic.clone()
    far[:40, :40] = 0
    assert float(far.sum()) > 0


def test_average_erf_is_normalised_mean():
    net = LinearCodec()
    imgs = [torch.rand(3, 12, 10), torch.rand(1, 3, 9, 9)]
    avg = average_erf(net, imgs, size=8)
    assert avg.shape == (8, 8)
    torch.testing.assert_close(avg.sum(), torch.tensor(1.0))
    ref = 0
    for img in imgs:
        e = effective_receptive_field(net, center_crop(img if img.dim() == 4 else img[None], 8))[0, 0]
        ref = ref + e / e.sum()
    torch.testing.assert_close(avg, ref / 2)


def test_center_crop_pads_small_images():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    assert center_crop(x, 2).tolist() == [[[[1.0, 2.0], [5.0, 6.0]]]]
    assert center_crop(x, 6).shape == (1, 1, 6, 6)
    assert center_crop(torch.rand(3, 2, 9), 8).shape == (3, 8, 8)


def test_erf_mass_area_brute_force():
    torch.manual_seed(1)
    for _ in range(5):
        m = torch.rand(6, 7) ** 4
        res = erf_mass_area(m, (0.5, 0.9, 1.0))
        vals = sorted(m.flatten().tolist(), reverse=True)
        total = sum(vals)
        for f, n in res.items():
            need = next(k for k in range(1, len(vals) + 1) if sum(vals[:k]) >= f * total - 1e-9)
            assert n == need
    assert erf_mass_area(torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == {0.5: 1, 0.9: 1}
    with pytest.raises(ValueError):
        erf_mass_area(torch.zeros(3, 3))


def test_erf_difference():
    a = torch.zeros(8, 8)
    a[2:4, 2:5] = torch.rand(2, 3) + 0.1
    b = torch.roll(a, shifts=(1, 2), dims=(0, 1))
    assert erf_difference(a, a) == 0.0
    assert erf_difference(a, b, offset=(1, 2)) == pytest.approx(0.0, abs=1e-12)
    assert erf_difference(a, b) > 0.5
    c = torch.zeros(8, 8)
    c[6:, 6:] = 1
    assert erf_difference(a, c) == pytest.approx(1.0)
    assert erf_difference(a, 3 * a) == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    # brute force: 0.5 * sum |d/|d| - e/|e||
    d, e = torch.rand(5, 5), torch.rand(5, 5)
    ref = 0.5 * sum(abs(float(d[i, j] / d.sum() - e[i, j] / e.sum())) for i in range(5) for j in range(5))
    assert erf_difference(d, e) == pytest.approx(ref)


@pytest.mark.parametrize("name", ["glic", "gabic", "gabic-keepall"])
def test_graph_stages_match_the_graphs(name):
    torch.manual_seed(0)
    net = create_model(name, size="tiny").eval()
    x = torch.rand(1, 3, 50, 70)
    stages = graph_stages(net, x)
    assert stages and all(not b.keep_info for _, b in graph_blocks(net))
    for st in stages:
        h, w = st.shape
        assert st.stride[0] * h == 64 and st.stride[1] * w == 128  # the padded 64x128 image
        for kind, g in st.graphs.items():
            assert g.num_nodes == h * w
            torch.testing.assert_close(st.degree[kind].flatten(), g.degree().to(st.degree[kind].dtype))
            for pixel in [(0, 0), (25, 33), (49, 69)]:
                nb = neighbours(st, kind, pixel)
                r, c = st.node_of_pixel(pixel)
                assert nb.shape == (int(st.degree[kind][r, c]), 2)
                # brute force: sources of the edges into node (r, c), back to node coordinates
                ei = g.edge_index
                src = ei[0][ei[1] == r * w + c]
                rows = ((nb[:, 0] + 0.5) / st.stride[0] - 0.5).round().long()
                cols = ((nb[:, 1] + 0.5) / st.stride[1] - 0.5).round().long()
                assert sorted((rows * w + cols).tolist()) == sorted(src.tolist())
                if kind == "local":
                    assert int((rows - r).abs().max()) <= 4 and int((cols - c).abs().max()) <= 4
                if kind == "window":
                    M = net.get_submodule(st.name).window.size
                    assert bool(((rows // M) == r // M).all() and ((cols // M) == c // M).all())
        if name == "glic":
            assert st.scores is not None and st.scores.shape == (h, w)
            assert set(st.target_degree) == {"local", "global"}
        else:
            assert st.scores is None


def test_graph_stages_rejects_models_without_graphs():
    with pytest.raises(ValueError, match="no graph blocks"):
        graph_stages(create_model("cnn", size="tiny"), torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_bit_allocation_sums_to_the_likelihood_rate(name):
    torch.manual_seed(0)
    net = create_model(name, size="tiny").eval()
    x = torch.rand(1, 3, 64, 128)  # a multiple of 64: no padding, every bit is inside the map
    maps = bit_allocation(net, x)
    with torch.no_grad():
        lik = net(x)["likelihoods"]
    ref = sum(float(-torch.log2(v).sum()) for v in lik.values())
    assert maps["total"].shape == (1, 64, 128)
    assert float(maps["total"].sum()) == pytest.approx(ref, rel=1e-4)
    assert float(maps["y"].sum()) == pytest.approx(float(-torch.log2(lik["y"]).sum()), rel=1e-4)
    # each latent position's bits are spread evenly over its 16x16 block
    y_bits = -torch.log2(lik["y"]).sum(1)[0]
    assert float(maps["y"][0, 16:32, 32:48].sum()) == pytest.approx(float(y_bits[1, 2]), rel=1e-4)
    assert bool((maps["y"][0, 16:32, 32:48] == maps["y"][0, 16, 32]).all())
    only_y = bit_allocation(net, x, include_hyper=False)
    torch.testing.assert_close(only_y["total"], maps["y"])
    diff = bit_allocation_difference(maps, only_y)
    torch.testing.assert_close(diff, maps["z"])


def test_bit_allocation_crops_padding():
    net = create_model("gabic", size="tiny").eval()
    maps = bit_allocation(net, torch.rand(3, 40, 50))
    assert maps["total"].shape == (1, 40, 50)
    with pytest.raises(ValueError):
        bit_allocation_difference(maps, bit_allocation(net, torch.rand(3, 40, 52)))


def test_quality_for_rate_matches_a_brute_force_search():
    torch.manual_seed(0)
    net = create_model("gabic", size="tiny", rate_lambdas=[0.0035, 0.013, 0.05]).eval()
    with torch.no_grad():  # an untrained tiny latent is near 0 at any initial gain: widen the gains
        net.gain.log_gain.copy_(torch.linspace(0, 4, 3)[:, None].expand_as(net.gain.log_gain))
    x = torch.rand(1, 3, 64, 64)

    def rate(q):
        return float(bit_allocation(net, x, quality=q)["total"].mean())

    grid = torch.linspace(1, 3, 81).tolist()
    rates = [rate(q) for q in grid]
    assert rates[0] < rates[-1]
    target = 0.5 * (rates[0] + rates[-1])
    best = min(abs(r - target) for r in rates)  # the finest the grid can get
    q = quality_for_rate(net, x, target)
    assert 1 < q < 3
    assert abs(rate(q) - target) <= best + 1e-3
    assert quality_for_rate(net, x, rates[0] / 2) == 1.0  # out of range: clamped
    assert quality_for_rate(net, x, rates[-1] * 2) == 3.0
    with pytest.raises(ValueError, match="variable-rate"):
        quality_for_rate(create_model("gabic", size="tiny"), x, target)


def test_load_analysis_models_seeded_and_shipped(tmp_path, monkeypatch, ship):
    monkeypatch.setenv("GNN_LIC_WEIGHTS_DIR", str(tmp_path))
    a = load_analysis_models(["cnn"], size="tiny")["cnn"]
    b = load_analysis_models(["cnn"], size="tiny")["cnn"]
    assert a[1] is False and not a[0].training
    for p, q in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(p, q)
    torch.manual_seed(5)
    net = create_model("cnn", size="tiny")
    ship(save_checkpoint(tmp_path / "cnn-tiny.pt", net), "cnn", "tiny")
    c, trained = load_analysis_models(["cnn"], size="tiny")["cnn"]
    assert trained is True
    for p, q in zip(c.parameters(), net.parameters()):
        assert torch.equal(p, q)


def test_analysis_images_builtin_and_folder(tmp_path):
    imgs = analysis_images()
    assert [n for n, _ in imgs] == ["chelsea.png", "coffee.png"]
    assert all(t.dim() == 4 and t.shape[1] == 3 and 0 <= float(t.min()) and float(t.max()) <= 1 for _, t in imgs)
    from PIL import Image

    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "a.png")
    got = analysis_images(tmp_path)
    assert got[0][0] == "a.png" and got[0][1].shape == (1, 3, 5, 6)
