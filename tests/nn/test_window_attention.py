"""(Shifted) window attention vs a brute-force loop over query positions (float64).

The reference never partitions, pads or rolls: for a query at original position
``(r, c)`` its keys are the real positions ``(r', c')`` that fall in the same window of
the map rolled by ``(-s, -s)`` *and* are not brought next to it by the wrap-around.
In unwrapped coordinates ``u = r - s + Hp`` (``Hp`` the map height padded to a multiple of
``M``), the rolled row is ``u mod Hp``; two rows share a window iff
``(u mod Hp) // M`` agree, and are contiguous iff ``u // Hp`` agree. The bias index is
then the original offset, ``(r - r' + M - 1)(2M - 1) + (c - c' + M - 1)``.
"""

import math

import pytest
import torch

from gnn_lic.nn import WindowAttention, WindowAttentionBlock, relative_position_index, window_mask


def _keys(r, c, H, W, M, s):
    Hp, Wp = H + (-H) % M, W + (-W) % M

    def where(v, n, np_):
        u = v - s + np_
        return (u % np_) // M, u // np_

    wr, fr = where(r, H, Hp)
    wc, fc = where(c, W, Wp)
    out = []
    for r2 in range(H):
        for c2 in range(W):
            if where(r2, H, Hp) == (wr, fr) and where(c2, W, Wp) == (wc, fc):
                out.append((r2, c2))
    return out


def _reference(layer: WindowAttention, x: torch.Tensor, shift: int) -> torch.Tensor:
    B, H, W, C = x.shape
    M, h = layer.window, layer.heads
    d = C // h
    table = layer.relative_position_bias_table
    Wqkv, bqkv = layer.qkv.weight, layer.qkv.bias
    out = torch.zeros_like(x)
    for b in range(B):
        qkv = x[b] @ Wqkv.T + bqkv  # (H, W, 3C): [q | k | v], heads contiguous
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        for r in range(H):
            for c in range(W):
                keys = _keys(r, c, H, W, M, shift)
                heads = []
                for hh in range(h):
                    sl = slice(hh * d, (hh + 1) * d)
                    logits = []
                    for r2, c2 in keys:
                        idx = (r - r2 + M - 1) * (2 * M - 1) + (c - c2 + M - 1)
                        logits.append(float(q[r, c, sl] @ k[r2, c2, sl]) / math.sqrt(d) + float(table[idx, hh]))
                    logits = torch.tensor(logits, dtype=x.dtype)
                    w = torch.exp(logits - logits.max())
                    w = w / w.sum()
                    heads.append(sum(w[i] * v[r2, c2, sl] for i, (r2, c2) in enumerate(keys)))
                out[b, r, c] = layer.proj(torch.cat(heads))
    return out


@pytest.mark.parametrize("hw,window,shift", [((8, 8), 4, 0), ((8, 8), 4, 2), ((5, 7), 4, 2), ((5, 7), 4, 0),
                                             ((6, 3), 3, 1), ((2, 2), 4, 2)])
def test_matches_bruteforce(hw, window, shift):
    torch.manual_seed(0)
    layer = WindowAttention(8, window, heads=2).double()
    with torch.no_grad():  # a bias large enough to matter
        layer.relative_position_bias_table.normal_(0, 1.0)
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference(layer, x, shift)
        got = layer(x, shift)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def test_relative_position_index_by_hand():
    # M = 2: tokens (0,0), (0,1), (1,0), (1,1); index = (dr + 1) * 3 + (dc + 1)
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.dtype == torch.int64
    assert idx[0, 8] == 0  # query (0,0), key (2,2): offset (-2,-2) -> first entry
    assert idx[8, 0] == 24  # offset (+2,+2) -> last entry
    assert (idx.diagonal() == 12).all()  # offset (0,0) -> centre of the 5x5 table
    assert idx[1, 3] == (0 - 1 + 2) * 5 + (1 - 0 + 2)  # query (0,1), key (1,0)
    assert sorted(set(idx.flatten().tolist())) == list(range(25))  # every table entry is used


def test_bias_table_has_the_swin_shape_and_is_used():
    layer = WindowAttention(16, 4, heads=8)
    assert layer.relative_position_bias_table.shape == ((2 * 4 - 1) ** 2, 8)
    x = torch.randn(1, 8, 8, 16)
    layer(x, 2).square().sum().backward()
    assert layer.relative_position_bias_table.grad.abs().sum() > 0
    before = layer(x, 2).detach()
    with torch.no_grad():
        layer.relative_position_bias_table[24, 0] += 5.0  # offset (0, 0) of head 0
    assert not torch.allclose(layer(x, 2), before)


def test_shift_mask_blocks_wrapped_neighbours():
    torch.manual_seed(0)
    H = W = 8
    M, s = 4, 2
    layer = WindowAttention(8, M, heads=2).double()
    x = torch.randn(1, H, W, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0, 0] += 10.0  # top-left token; rolled by (-2, -2) it lands in the bottom-right window
    with torch.no_grad():
        diff = (layer(x2, s) - layer(x, s)).abs().sum(-1)[0]
        diff0 = (layer(x2, 0) - layer(x, 0)).abs().sum(-1)[0]
    # shifted: the bottom-right window holds original rows/cols {6, 7, 0, 1}; (0,0) may reach only (0..1, 0..1)
    changed = (diff > 1e-12).nonzero().tolist()
    assert sorted(changed) == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert diff[7, 7] == 0 and diff[6, 0] == 0 and diff[0, 6] == 0
    # unshifted: the plain top-left 4x4 window
    assert sorted((diff0 > 1e-12).nonzero().tolist()) == [[r, c] for r in range(4) for c in range(4)]
    # the mask itself: in the last rolled window, token (2,2) (original (0,0)) is blocked from (0,0) (original (6,6))
    mask = window_mask(H, W, M, s)
    assert mask.shape == (4, 16, 16)
    assert not mask[0].any()  # windows away from the wrap are unmasked
    assert mask[3, 2 * M + 2, 0] and not mask[3, 2 * M + 2, 3 * M + 3]
    assert window_mask(H, W, M, 0) is None
    # no row is fully blocked (every token keeps itself)
    assert not mask.diagonal(dim1=1, dim2=2).any()


def test_odd_sizes_pad_and_mask_padding():
    torch.manual_seed(1)
    layer = WindowAttention(16, 4, heads=4)
    for hw in [(1, 1), (3, 5), (7, 9), (4, 13)]:
        x = torch.randn(2, *hw, 16, requires_grad=True)
        for s in (0, 2):
            y = layer(x, s)
            assert y.shape == x.shape and torch.isfinite(y).all()
            y.sum().backward()
            assert torch.isfinite(x.grad).all()
    # padded positions are masked: cropping a map to its first rows changes nothing in windows it keeps whole
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        full, cut = layer(x, 0), layer(x[:, :5], 0)
    torch.testing.assert_close(cut[:, :4], full[:, :4])
    assert not torch.allclose(cut[:, 4], full[:, 4])  # row 4 lost keys 5..7
    m = window_mask(5, 7, 4, 0)
    assert m is not None and m.shape == (4, 16, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of heads"):
        WindowAttention(10, 4, heads=4)
    with pytest.raises(ValueError, match="shift"):
        WindowAttention(8, 4, heads=2)(torch.zeros(1, 4, 4, 8), 4)


@pytest.mark.parametrize("swin_pair", [False, True])
def test_block_shapes_gradients_and_layout(swin_pair):
    torch.manual_seed(0)
    block = WindowAttentionBlock(16, window=4, heads=8, swin_pair=swin_pair)
    layers = block.attention_layers()
    assert [lay.shift for lay in layers] == ([0, 2] if swin_pair else [2])
    assert all((lay.mlp is None) != swin_pair for lay in layers)
    x = torch.randn(2, 16, 9, 6)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert "window=4, shift=2" in repr(block)


def test_block_is_gated_residual():
    """out = a(x) * sigmoid(b(x)) + x, with a and b the two branches."""
    torch.manual_seed(0)
    block = WindowAttentionBlock(8, window=4, heads=2).double()
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = block.branch_a(x) * torch.sigmoid(block.branch_b(x)) + x
        torch.testing.assert_close(block(x), ref)
        # branch b starts with x + SW-MSA(x): the residual layer
        lay = block.attention_layers()[0]
        t = x.permute(0, 2, 3, 1)
        torch.testing.assert_close(lay(x), (t + lay.attn(t, 2)).permute(0, 3, 1, 2))
