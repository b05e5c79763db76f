"""Complexity scores (GLIC eqs. 3-5) and degree quotas (Sec. 3.3.2, eq. 6) vs per-pixel loops."""

import pytest
import torch

from gnn_lic.graph import (
    SCORES,
    AdaptiveDegree,
    LocalWindow,
    build_graph,
    complexity_score,
    degree_quota,
    rms_gradient,
    sobel_gradients,
)

from .bruteforce import quota, score_maps, sobel_pixel


def _t(maps, B, H, W):
    return torch.tensor(maps, dtype=torch.float64).view(B, H, W)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 1, 4, 4), (1, 2, 1, 5), (1, 4, 6, 1), (2, 2, 1, 1)])
def test_rms_gradient_matches_loop(shape):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64)
    B, C, H, W = shape
    s = rms_gradient(x)
    assert s.shape == (B, H, W) and s.dtype == torch.float64
    torch.testing.assert_close(s, _t(score_maps(x, "rms"), B, H, W), rtol=1e-12, atol=1e-12)


def test_sobel_gradients_matches_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    g = sobel_gradients(x)
    xl = x.tolist()
    want = torch.zeros_like(x)
    for b in range(2):
        for c in range(3):
            for u in range(4):
                for v in range(5):
                    sx, sy = sobel_pixel(xl[b][c], u, v)
                    want[b, c, u, v] = sx * sx + sy * sy
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


def test_rms_gradient_literal_ramp():
    """x(u, v) = v: interior S_x = 1*2 + 2*2 + 1*2 = 8, S_y = 0; replicate border -> 4.

    Pins the plain Sobel of eq. (3) (no 1/4 normalisation, no smoothing).
    """
    x = torch.arange(5, dtype=torch.float64).repeat(4, 1).expand(1, 2, 4, 5).clone()
    want = torch.tensor([4.0, 8.0, 8.0, 8.0, 4.0], dtype=torch.float64).repeat(4, 1)
    torch.testing.assert_close(rms_gradient(x)[0], want)
    # RMS over channels: channels with magnitudes 8 and 0 (interior) -> sqrt(64 / 2)
    x2 = torch.cat([x[:, :1], torch.zeros_like(x[:, :1])], 1)
    assert rms_gradient(x2)[0, 1, 2].item() == pytest.approx((64 / 2) ** 0.5)
    assert complexity_score(x2, "mean")[0, 1, 2].item() == pytest.approx(4.0)


def test_mean_and_none_scores_match_loop():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(complexity_score(x, "mean"), _t(score_maps(x, "mean"), 2, 5, 4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(complexity_score(x, "rms"), _t(score_maps(x, "rms"), 2, 5, 4), rtol=1e-12, atol=1e-12)
    none = complexity_score(x, None)
    assert none.shape == (2, 5, 4) and bool((none == 1).all())
    # RMS >= mean of magnitudes (power-mean inequality), strict for unequal channels
    assert bool((complexity_score(x, "rms") >= complexity_score(x, "mean") - 1e-12).all())


@pytest.mark.parametrize("name", sorted(SCORES))
def test_every_score_is_a_nonnegative_map(name):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 6)
    s = complexity_score(x, name)
    assert s.shape == (2, 5, 6)
    assert bool(torch.isfinite(s).all()) and bool((s >= 0).all())
    assert float(s.std()) > 0  # a random map is not scored as constant
    # the transforms run on channels-last memory: the same map from NHWC strides
    x_cl = x.to(dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(complexity_score(x_cl, name), complexity_score(x.double(), name), atol=1e-12, rtol=0)


def test_unknown_score_raises():
    with pytest.raises(ValueError):
        complexity_score(torch.randn(1, 2, 3, 3), "sobel")
    with pytest.raises(ValueError):
        AdaptiveDegree(4, score="sobel")
    with pytest.raises(ValueError):
        rms_gradient(torch.randn(2, 3, 3))


def test_scores_scale_linearly_and_weights_are_scale_invariant():
    torch.manual_seed(3)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    for name in ("rms", "mean"):
        torch.testing.assert_close(complexity_score(3.7 * x, name), 3.7 * complexity_score(x, name))
    n = torch.full((36,), 9)
    s = rms_gradient(x).view(1, -1)
    q1, d1 = degree_quota(s, 5.0, n)
    q2, d2 = degree_quota(123.0 * s, 5.0, n)
    torch.testing.assert_close(q1, q2)
    assert torch.equal(d1, d2)
    # the whole graph is scale invariant (cosine similarity and normalised weights)
    sel = AdaptiveDegree(avg_degree=5, iters=5)
    e1, i1 = build_graph(x, LocalWindow(3), sel, return_info=True)
    e2, i2 = build_graph(4.0 * x, LocalWindow(3), sel, return_info=True)  # power of 2: exact
    assert torch.equal(e1, e2)
    torch.testing.assert_close(i1.quota, i2.quota)
    e3, i3 = build_graph(0.37 * x, LocalWindow(3), sel, return_info=True)
    torch.testing.assert_close(i1.quota, i3.quota)
    torch.testing.assert_close(i1.scores * 0.37, i3.scores)


def _loop_quota(scores, avg, n):
    B, N = scores.shape
    qs, ds = [], []
    for b in range(B):
        nb = n[b].tolist() if n.dim() == 2 else n.tolist()
        q, d = quota(scores[b].tolist(), avg, nb)
        qs.append(q)
        ds.append(d)
    return torch.tensor(qs, dtype=torch.float64), torch.tensor(ds)


def test_degree_quota_matches_loop():
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(3, 20, generator=g, dtype=torch.float64) ** 3
    scores[1] *= 1000.0
    n = torch.randint(1, 12, (3, 20), generator=g)
    for avg in (1.0, 3.3, 7.0):
        for nn_ in (n, n[0]):
            q, d = degree_quota(scores, avg, nn_)
            wq, wd = _loop_quota(scores, avg, nn_)
            torch.testing.assert_close(q, wq, rtol=1e-12, atol=1e-12)
            assert torch.equal(d, wd)
            assert d.dtype == torch.int64
            # quotas are a budget split: sum_i q_i = N * avg per image (eq. 6 before rounding)
            torch.testing.assert_close(q.sum(1), torch.full((3,), 20 * avg, dtype=torch.float64))


def test_degree_quota_clip_and_rounding():
    # one dominant node: q >> n_i -> clipped to n_i; zero-score nodes: q = 0 -> clipped to 1
    s = torch.tensor([[100.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    q, d = degree_quota(s, 4.0, torch.tensor([5, 5, 5, 5]))
    torch.testing.assert_close(q, torch.tensor([[1600 / 101, 0.0, 0.0, 16 / 101]], dtype=torch.float64))
    assert d.tolist() == [[5, 1, 1, 1]]
    # round half to even: q = 2.5 -> 2, q = 3.5 -> 4
    ones = torch.ones(1, 4, dtype=torch.float64)
    assert degree_quota(ones, 2.5, torch.tensor([9] * 4))[1].tolist() == [[2] * 4]
    assert degree_quota(ones, 3.5, torch.tensor([9] * 4))[1].tolist() == [[4] * 4]
    # n_i bounds the target even for a uniform quota
    assert degree_quota(ones, 6.0, torch.tensor([2, 9, 1, 6]))[1].tolist() == [[2, 6, 1, 6]]


def test_degree_quota_constant_image_is_uniform():
    zeros = torch.zeros(2, 6, dtype=torch.float64)
    q, d = degree_quota(zeros, 3.0, torch.tensor([9, 9, 9, 9, 2, 9]))
    assert bool(torch.isfinite(q).all())
    torch.testing.assert_close(q, torch.full((2, 6), 3.0, dtype=torch.float64))
    assert d.tolist() == [[3, 3, 3, 3, 2, 3]] * 2
    # one constant image next to a textured one: normalisation is per image
    s = torch.stack([torch.zeros(6, dtype=torch.float64), torch.arange(6, dtype=torch.float64)])
    q, d = degree_quota(s, 3.0, torch.tensor([9] * 6))
    torch.testing.assert_close(q[0], torch.full((6,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(q[1], torch.arange(6, dtype=torch.float64) * 18 / 15)


def test_constant_map_through_build_graph_is_uniform():
    x = torch.full((2, 3, 4, 5), 0.7, dtype=torch.float64)
    x[1] = torch.randn(3, 4, 5, dtype=torch.float64)
    _, info = build_graph(x, LocalWindow(3), AdaptiveDegree(avg_degree=4, score="rms"), return_info=True)
    assert float(info.scores[0].abs().max()) < 1e-12  # no gradient on a constant map
    torch.testing.assert_close(info.quota[0], torch.full((4, 5), 4.0, dtype=torch.float64))
    assert bool((info.target_degree[0] == 4).all())
    # all similarities equal 1 on a constant map: Algorithm 1 keeps every candidate
    assert torch.equal(info.degree[0], info.num_candidates[0])
    # the textured image is normalised on its own
    torch.testing.assert_close(info.quota[1].sum(), torch.tensor(80.0, dtype=torch.float64))
