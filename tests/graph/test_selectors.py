"""Selectors vs brute force: AdaptiveDegree (GLIC eqs. 6-9, Algorithm 1) and TopK (GABIC eq. 7)."""

import pytest
import torch

from gnn_lic.graph import (
    SCORES,
    AdaptiveDegree,
    GlobalGrid,
    LocalWindow,
    TopK,
    WindowPartition,
    bisection_threshold,
    build_graph,
)

from .bruteforce import adaptive_reference, bisection, edges_by_target, topk_reference

CSETS = [
    LocalWindow(3),
    LocalWindow(4, border="drop"),
    LocalWindow(5),
    GlobalGrid(2),
    WindowPartition(3),
]


def _random_map(seed, B=2, C=3, H=5, W=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g, dtype=torch.float64)


def _tied_map(seed, B=2, C=3, H=5, W=6):
    """One-hot features with random positive scales, and a few zero vectors.

    Cosine similarities are then exactly 0 or 1 (many exact ties); zero vectors
    have similarity 0 to everything, themselves included.
    """
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(-1, C, (B, 1, H, W), generator=g)  # -1: zero vector
    scale = 0.5 + 1.5 * torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    x = (label == torch.arange(C).view(1, C, 1, 1)).double() * scale
    assert bool((label == -1).any())
    return x


def _sign_map(seed, B=2, C=4, H=6, W=6):
    """Features in s * {-1, +1}^4 (s a power of two): cosines are exactly k/4, k in -4..4
    (in any summation order).

    With power-of-two candidate counts the initial mean and the bisection
    midpoints land exactly on similarity values, so ``S >= theta`` (eqs. 8-9)
    and ``S > theta`` give different graphs.
    """
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (B, C, H, W), generator=g).double() * 2 - 1
    return signs * 2.0 ** torch.randint(-1, 2, (B, 1, H, W), generator=g).double()


def _assert_same_edges(ei, want, num_nodes, what):
    got = edges_by_target(ei, num_nodes)
    for i in range(num_nodes):
        assert got[i] == want[i], f"{what}: target {i} got {got[i]} want {want[i]}"


def _check_adaptive(x, cset, avg, score, iters):
    B, C, H, W = x.shape
    sel = AdaptiveDegree(avg_degree=avg, score=score, iters=iters)
    ei, info = build_graph(x, cset, sel, return_info=True)
    want, ref = adaptive_reference(x, cset, avg, score, iters)
    _assert_same_edges(ei, want, B * H * W, f"{cset} {sel}")
    shape = (B, H, W)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(info.scores, torch.tensor(ref["scores"], **f64).view(shape), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.quota, torch.tensor(ref["quota"], **f64).view(shape), rtol=1e-10, atol=1e-12)
    assert torch.equal(info.target_degree, torch.tensor(ref["target"]).view(shape))
    torch.testing.assert_close(info.threshold, torch.tensor(ref["threshold"], **f64).view(shape), rtol=0, atol=1e-12)
    assert torch.equal(info.num_candidates, torch.tensor(ref["num_candidates"]).view(shape))
    assert torch.equal(info.degree, torch.tensor([len(want[i]) for i in range(B * H * W)]).view(shape))
    return ei, info, ref


@pytest.mark.parametrize("iters", [0, 1, 5, 12])
@pytest.mark.parametrize("score", ["rms", "mean", None])
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_adaptive_degree_matches_bruteforce(cset, score, iters):
    _check_adaptive(_random_map(7), cset, 4.5, score, iters)


@pytest.mark.parametrize("iters", [0, 3, 5])
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_adaptive_degree_with_exact_ties_matches_bruteforce(cset, iters):
    """S in {0, 1} exactly: ``S >= theta`` keeps every tied candidate on the right side."""
    _check_adaptive(_tied_map(3), cset, 3, "rms", iters)


POW2_CSETS = [WindowPartition(2), GlobalGrid(2), LocalWindow(4), LocalWindow(2, border="drop")]


@pytest.mark.parametrize("iters", [0, 1, 2, 5])
@pytest.mark.parametrize("cset", POW2_CSETS, ids=repr)
def test_adaptive_degree_threshold_hits_similarity_values(cset, iters):
    """Exact dyadic similarities: the counts of Algorithm 1 and the final selection
    use ``S >= theta`` (eqs. 8-9, lines 7 and 15), not ``S > theta``."""
    x = _sign_map(4)
    _, _, ref = _check_adaptive(x, cset, 2, "rms", iters)
    # the data really exercises equality: a strict comparison would change the graph
    strict = [
        [j for j, s in enumerate(sims) if s > bisection(sims, d, iters, strict=True)]
        for sims, d in zip(ref["sims"], ref["target"])
    ]
    kept = [[j for j, s in enumerate(sims) if s >= t] for sims, t in zip(ref["sims"], ref["threshold"])]
    assert strict != kept


def test_algorithm1_counts_with_greater_or_equal():
    """Literal case: S = (1, .5, .5, 0), d* = 1, T = 1.

    theta_0 = mean = 0.5; m = #{S >= 0.5} = 3 > 1 so lo = 0.5, theta = 0.75: keeps {1}.
    (Counting with ``>`` would give m = 1, hi = 0.5, theta = 0.25 and keep three.)
    """
    sim = torch.tensor([[1.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    theta = bisection_threshold(sim, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1]), iters=1)
    assert theta.tolist() == [0.75]
    theta0 = bisection_threshold(sim, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1]), iters=0)
    assert theta0.tolist() == [0.5]  # T = 0: keep S >= mean -> 3 neighbours


def test_adaptive_degree_normalises_per_image():
    """Quotas split N * avg per image: a batch item's targets ignore the others."""
    x = _random_map(11)
    both = build_graph(x, LocalWindow(3), AdaptiveDegree(4), return_info=True)[1]
    x2 = x.clone()
    x2[1] *= 50.0  # a much more textured second image
    x2[1] += torch.randn_like(x2[1])
    other = build_graph(x2, LocalWindow(3), AdaptiveDegree(4), return_info=True)[1]
    assert torch.equal(both.target_degree[0], other.target_degree[0])
    torch.testing.assert_close(both.quota.sum((1, 2)), torch.full((2,), 4.0 * 30, dtype=torch.float64))


def test_precomputed_scores_are_used():
    x = _random_map(12)
    s = torch.rand(2, 5, 6, dtype=torch.float64)
    ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(4), scores=s, return_info=True)
    torch.testing.assert_close(info.scores, s)
    torch.testing.assert_close(info.quota, 30 * 4.0 * s / s.sum((1, 2), keepdim=True))


@pytest.mark.parametrize("iters", [0, 1, 2, 5])
def test_algorithm1_keeps_the_most_similar_candidate(iters):
    """theta <= max_j S_ij always, so every node keeps (at least) its best candidate."""
    x = _random_map(13, C=4, H=6, W=6)
    for cset in (LocalWindow(3), GlobalGrid(3), LocalWindow(4, border="drop")):
        # avg_degree tiny: most targets are 1
        ei, info, ref = _check_adaptive(x, cset, 0.3, "rms", iters)
        assert int(info.degree.min()) >= 1
        th = info.threshold.flatten().tolist()
        for i, sims in enumerate(ref["sims"]):
            assert min(sims) <= th[i] <= max(sims)


def test_algorithm1_guarantee_with_many_iterations():
    """What Algorithm 1 guarantees (distinct similarities, T large): NOT d_i = d_i*.

    Invariant: m(lo) > d* >= m(hi); lo and hi converge onto the (d*+1)-th largest
    similarity and the final, unchecked midpoint may fall on either side of it.
    So d_i is d* or d* + 1 when d* < n_i, and n_i - 1 or n_i when d* = n_i (theta
    only ever decreases towards min S).
    """
    x = _random_map(14, B=2, C=4, H=8, W=8)
    seen = set()
    for cset in (LocalWindow(5), GlobalGrid(4), LocalWindow(4, border="drop")):
        # (no edge-by-edge comparison here: after 60 halvings theta sits within an ulp
        # of a similarity, where the last bit of the cosine decides)
        ei, info = build_graph(x, cset, AdaptiveDegree(6, score="rms", iters=60), return_info=True)
        d, t, n = info.degree, info.target_degree, info.num_candidates
        below = t < n
        assert bool(((d[below] == t[below]) | (d[below] == t[below] + 1)).all())
        assert bool(((d[~below] == n[~below]) | (d[~below] == n[~below] - 1)).all())
        seen |= set((d - t).unique().tolist())
    # both outcomes really occur: the realised degree is not the target in general
    assert {0, 1} <= seen


def test_uniform_score_gives_uniform_targets_and_roughly_uniform_degrees():
    x = _random_map(15, B=2, C=4, H=8, W=8)
    _, info = build_graph(x, LocalWindow(5), AdaptiveDegree(avg_degree=6, score=None, iters=60), return_info=True)
    assert bool((info.target_degree == 6).all())
    assert bool(((info.degree == 6) | (info.degree == 7)).all())
    _, info5 = build_graph(x, LocalWindow(5), AdaptiveDegree(avg_degree=6, score=None), return_info=True)
    assert bool((info5.target_degree == 6).all())
    assert abs(info5.degree.double().mean().item() - 6) < 1.0
    # the RMS-G score does not give uniform targets on the same map
    _, rms = build_graph(x, LocalWindow(5), AdaptiveDegree(avg_degree=6, score="rms"), return_info=True)
    assert len(rms.target_degree.unique()) > 3


@pytest.mark.parametrize("name", sorted(SCORES) + [None])
def test_every_score_name_runs(name):
    x = _random_map(16).float()
    ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(avg_degree=4, score=name), return_info=True)
    assert ei.dtype == torch.int64 and ei.shape[0] == 2
    assert int(info.degree.sum()) == ei.shape[1]
    assert bool(((info.target_degree >= 1) & (info.target_degree <= info.num_candidates)).all())
    torch.testing.assert_close(info.quota.sum((1, 2)), torch.full((2,), 4.0 * 30))


def test_bisection_threshold_ignores_invalid_entries():
    g = torch.Generator().manual_seed(17)
    sim = torch.rand(3, 4, 7, generator=g, dtype=torch.float64) * 2 - 1
    valid = torch.rand(3, 4, 7, generator=g) > 0.3
    valid[..., 0] = True
    sim_dirty = torch.where(valid, sim, torch.full_like(sim, 50.0))  # junk that must not count
    target = torch.randint(1, 5, (3, 4), generator=g)
    for iters in (0, 1, 4, 9):
        theta = bisection_threshold(sim_dirty, valid, target, iters)
        for a in range(3):
            for b in range(4):
                sims = [s for s, ok in zip(sim[a, b].tolist(), valid[a, b].tolist()) if ok]
                assert theta[a, b].item() == pytest.approx(bisection(sims, int(target[a, b]), iters), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8, 40])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_topk_matches_sorted_bruteforce(cset, k, loop):
    x = _random_map(21)
    B, C, H, W = x.shape
    ei, info = build_graph(x, cset, TopK(k, loop=loop), return_info=True)
    want = topk_reference(x, cset, k, loop)
    _assert_same_edges(ei, want, B * H * W, f"{cset} TopK({k}, {loop})")
    # min(k, n_i) neighbours (n_i without the node itself unless loop)
    assert torch.equal(info.degree.flatten(), torch.tensor([len(want[i]) for i in range(B * H * W)]))
    if not loop:
        assert not bool((ei[0] == ei[1]).any())


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_topk_ties_broken_by_candidate_order(cset, k, loop):
    x = _tied_map(22)
    B, C, H, W = x.shape
    ei = build_graph(x, cset, TopK(k, loop=loop))
    _assert_same_edges(ei, topk_reference(x, cset, k, loop), B * H * W, f"{cset} TopK({k}) ties")


def test_topk_literal_example():
    """1 x 4 map, C = 1: S = sign(x_i x_j). Node 0 (+) has candidates 1 (-), 2 (+), 3 (+)."""
    x = torch.tensor([1.0, -2.0, 3.0, 0.5]).view(1, 1, 1, 4)
    got = edges_by_target(build_graph(x, WindowPartition(4), TopK(2)), 4)
    assert got[0] == [2, 3]  # S = 1, 1 beat S = -1
    assert got[1] == [0, 2]  # all S = -1: ties -> candidate order
    got = edges_by_target(build_graph(x, WindowPartition(4), TopK(2, loop=True)), 4)
    assert got[0] == [0, 2]  # itself and the first tie
    got = edges_by_target(build_graph(x, WindowPartition(4), TopK(10)), 4)
    assert all(got[i] == [j for j in range(4) if j != i] for i in range(4))  # k > n_i: all


def test_selector_arguments_validated():
    with pytest.raises(ValueError):
        TopK(0)
    with pytest.raises(ValueError):
        AdaptiveDegree(avg_degree=0)
    with pytest.raises(ValueError):
        AdaptiveDegree(avg_degree=4, iters=-1)


def test_selector_repr():
    assert repr(TopK(9)) == "TopK(k=9, loop=False, skip_first=False)"
    assert repr(AdaptiveDegree(16)) == "AdaptiveDegree(avg_degree=16, score='rms', iters=5, bisection='paper')"
