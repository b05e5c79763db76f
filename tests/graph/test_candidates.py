"""Candidate sets (GLIC eqs. 1-2, GABIC Sec. 3.3) against brute-force per-node loops.

``KeepAll()`` keeps every candidate, so the in-neighbours of each target in the
``edge_index`` are exactly its candidate set; they must equal the sets built by
hand from the documented rules, in row-major window order.
"""

import pytest
import torch

from gnn_lic.graph import GlobalGrid, KeepAll, LocalWindow, WindowPartition, build_graph

from .bruteforce import candidate_lists, edges_by_target, keepall_reference


def _check(cset, H, W, B=1, C=3, loop=True):
    torch.manual_seed(H * 100 + W)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    ei, info = build_graph(x, cset, KeepAll(loop=loop), return_info=True)
    N = H * W
    got = edges_by_target(ei, B * N)
    want = keepall_reference(cset, B, H, W, loop=loop)
    for i in range(B * N):
        # same set and same (row-major window) order; no duplicates
        assert got[i] == want[i], f"{cset} {H}x{W}: node {i} ({(i % N) // W}, {i % W}) got {got[i]} want {want[i]}"
    counts = torch.tensor([len(c) for c in candidate_lists(cset, H, W)]).view(1, H, W).expand(B, H, W)
    if loop:
        assert torch.equal(info.num_candidates, counts)
        assert torch.equal(info.degree, counts)
    return info


MAPS = [(5, 7), (6, 6), (3, 4), (1, 6), (7, 1), (1, 1)]


@pytest.mark.parametrize("H,W", MAPS)
@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("border", ["shift", "drop"])
def test_local_window_matches_bruteforce(L, border, H, W):
    info = _check(LocalWindow(L, border=border), H, W)
    if border == "shift":
        # documented: every node keeps min(L, H) * min(L, W) candidates (itself included)
        assert bool((info.num_candidates == min(L, H) * min(L, W)).all())


@pytest.mark.parametrize("block", [1, 2, 3, 7])
@pytest.mark.parametrize("border", ["shift", "drop"])
@pytest.mark.parametrize("L", [3, 4, 5])
def test_local_window_independent_of_block(L, border, block):
    """``block`` only tiles the computation; the candidate sets must not change."""
    _check(LocalWindow(L, border=border, block=block), 9, 7)


def test_local_window_literal_example():
    """Hand-written sets on a 4x5 map, L=3 (offsets -1..1)."""
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    shift = edges_by_target(build_graph(x, LocalWindow(3), KeepAll()), 20)
    drop = edges_by_target(build_graph(x, LocalWindow(3, border="drop"), KeepAll()), 20)
    # corner (0, 0): shift moves the window to rows 0-2, cols 0-2; drop keeps rows/cols 0-1
    assert shift[0] == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert drop[0] == [0, 1, 5, 6]
    # (3, 4) bottom-right: shift -> rows 1-3, cols 2-4
    assert shift[19] == [7, 8, 9, 12, 13, 14, 17, 18, 19]
    assert drop[19] == [13, 14, 18, 19]
    # interior (1, 2): both are the centred window
    assert shift[7] == drop[7] == [1, 2, 3, 6, 7, 8, 11, 12, 13]
    # even L=2: offsets -1..0
    even = edges_by_target(build_graph(x, LocalWindow(2, border="drop"), KeepAll()), 20)
    assert even[7] == [1, 2, 6, 7]
    assert even[0] == [0]


@pytest.mark.parametrize(
    "H,W,G",
    [
        (8, 8, 4),  # H multiple of G
        (8, 12, 4),  # non-square, both multiples
        (10, 7, 3),  # not multiples: remainder rows/cols exist
        (11, 9, 4),
        (3, 5, 4),  # H < G (stride 1, clipped lattice)
        (2, 2, 16),
        (6, 9, 2),
        (5, 7, 1),  # G = 1: a single candidate
        (1, 1, 3),
    ],
)
def test_global_grid_matches_bruteforce(H, W, G):
    info = _check(GlobalGrid(G), H, W)
    # documented: min(G, H) * min(G, W) candidates for every node, no divisibility needed
    assert bool((info.num_candidates == min(G, H) * min(G, W)).all())


def test_global_grid_literal_example():
    """10 x 10 map, G = 3: Omega = 3, node (4, 8) -> rows {1, 4, 7}, cols {2, 5, 8}."""
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    got = edges_by_target(build_graph(x, GlobalGrid(3), KeepAll()), 100)
    assert got[4 * 10 + 8] == [r * 10 + c for r in (1, 4, 7) for c in (2, 5, 8)]
    # remainder row 9 (9 mod 3 = 0) uses the lattice of row 0 and does not contain itself
    assert got[9 * 10 + 9] == [r * 10 + c for r in (0, 3, 6) for c in (0, 3, 6)]
    # G = 1: the single candidate (u mod H, v mod W) = the node itself
    one = edges_by_target(build_graph(x, GlobalGrid(1), KeepAll()), 100)
    assert all(one[i] == [i] for i in range(100))


@pytest.mark.parametrize("H,W,M", [(5, 7, 2), (8, 8, 4), (7, 5, 3), (3, 2, 8), (6, 6, 1), (4, 9, 4)])
def test_window_partition_matches_bruteforce(H, W, M):
    info = _check(WindowPartition(M), H, W)
    assert int(info.num_candidates.max()) == min(M, H) * min(M, W)


def test_window_partition_literal_example():
    """5 x 5 map, M = 2: bottom-right node sits alone in its partial 1 x 1 tile."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    got = edges_by_target(build_graph(x, WindowPartition(2), KeepAll()), 25)
    assert got[24] == [24]
    assert got[0] == got[1] == got[5] == got[6] == [0, 1, 5, 6]
    assert got[4] == got[9] == [4, 9]  # right column tile is 2 x 1
    assert got[22] == [22, 23]  # bottom row tile is 1 x 2


@pytest.mark.parametrize("cset", [LocalWindow(3), LocalWindow(4, border="drop"), GlobalGrid(3), WindowPartition(3)])
def test_keepall_without_loop_drops_only_self(cset):
    _check(cset, 7, 6, B=2, loop=False)


def test_candidate_rules_validate_size():
    for cls in (LocalWindow, GlobalGrid, WindowPartition):
        with pytest.raises(ValueError):
            cls(0)
    with pytest.raises(ValueError):
        LocalWindow(3, border="reflect")


def test_repr():
    assert repr(LocalWindow(8)) == "LocalWindow(size=8, border='shift', block=8)"
    assert repr(GlobalGrid(16)) == "GlobalGrid(size=16, groups=None)"
    assert repr(WindowPartition(4)) == "WindowPartition(size=4)"


def test_the_compiled_window_path_is_a_hook_of_the_candidate_set():
    """``window_side`` decides the compiled local-window similarities; the builder asks no type."""
    from gnn_lic.graph import BlockWindow, CandidateSet, candidates

    assert LocalWindow(4).window_side() == 4 and LocalWindow(4, border="drop").window_side() is None
    assert BlockWindow(4, 8).window_side() is None and GlobalGrid(4).window_side() is None
    assert candidates(LocalWindow(4), 6, 7).window == (4, 6, 7)
    assert candidates(LocalWindow(4, border="drop"), 6, 7).window is None

    class Renamed(LocalWindow):  # another class with the same rule takes the same path
        pass

    assert isinstance(Renamed(3), CandidateSet) and candidates(Renamed(3), 5, 5).window == (3, 5, 5)
    x = torch.randn(1, 3, 5, 6)
    assert torch.equal(build_graph(x, Renamed(3), KeepAll()), build_graph(x, LocalWindow(3), KeepAll()))
