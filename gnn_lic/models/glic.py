r"""GLIC: Graph-based Learned Image Compression (CVPR 2026), and its ablation variants.

Architecture (GLIC Fig. 2(a), Sec. 4.1.3, and the authors' released model):

.. code-block:: none

     x ─► conv s2 ─► L1 x conv block ─► conv s2 ─► GFA(L2) ─► conv s2 ─► GFA(L3) ─► conv s2 ─► y
          3→C1          (C1, 1/2)        C1→C2     (C2, 1/4)    C2→C3    (C3, 1/8)    C3→C4
     │                       ⊕                        ⊕                      ⊕                 ⊕
     └─► WLS ──────────────► WLS ───────────────────► WLS ─────────────────► WLS ─────────────┘  (optional wavelet branch)

     y ─► SCCTX latent codec (hyperprior + 5 uneven channel groups x checkerboard) ─► y_hat

     y_hat ─► subpel x2 ─► GFA(L3) ─► subpel x2 ─► GFA(L2) ─► subpel x2 ─► L1 x conv block ─► subpel x2 ─► x_hat
              C4→C3                    C3→C2                   C2→C1                         C1→3
        └─► iWLS ────────► ⊕ ─► iWLS ────► ⊕ ─► iWLS ────────────► ⊕ ─► iWLS ─────────────────────► ⊕

The paper configuration is ``C = (128, 192, 192, 320)``, ``L = (3, 5, 5)``, GFA
MLP ratios 4 (1/4 resolution) and 2 (1/8), local window 8, global grid 16,
average degree 64, RMS-G scores, 5 bisection steps. GFA blocks come from
:class:`gnn_lic.nn.GFABlock`; the model builds no graph itself.

Layer order: with ``order="local-global"`` a GFA block alternates local and global
layers starting with local (depth 5: L, G, L, G, L), as the authors' code does;
GLIC Table 3 calls this configuration "Global+Local (Ours)" and the flipped one
"Reverse", which is ``glic-reverse`` here.

Registered names (every one at sizes ``tiny``, ``small`` and ``paper``):

============================  ==============================================================
``glic``                      GLIC (local-global GFA, RMS-G)
``glic-local``                local graph only (GLIC Table 3, "w/o Global")
``glic-global``               global graph only ("w/o Local")
``glic-reverse``              global then local ("Reverse")
``glic-score-mean``           Sobel gradient, mean pooling (GLIC Table 4)
``glic-score-entropy``        local entropy, RMS pooling
``glic-score-residual``       rescaling residual, RMS pooling
``glic-score-residual-mean``  rescaling residual, mean pooling
``glic-knn``                  no complexity score: uniform quotas (k-NN-like, "None / None")
``cnn``                       same layout and entropy model, GFA blocks replaced by
                              ``GatedTransformCNN`` stacks of the same depth
============================  ==============================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence

from torch import nn

from gnn_lic.graph import AdaptiveDegree, BlockWindow, CandidateSet, GlobalGrid, LocalWindow

from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.scctx import scctx_latent_codec
from gnn_lic.models.glic_transforms import GLICAnalysis, GLICSynthesis, StageFactory
from gnn_lic.models.layers import GatedTransformCNN
from gnn_lic.models.registry import register_model
from gnn_lic.nn.blocks import GFABlock

__all__ = ["GLIC", "GFAConfig", "GFA_KEYWORDS", "GLICAnalysis", "GLICSynthesis", "glic_stages", "GLIC_PRESETS", "GLIC_VARIANTS", "EARLIER_PRESETS",
           "build_glic"]

BLOCK_KINDS = ("gfa", "cnn")
#: local candidate rules: "block" (query blocks sharing a window, the authors' code)
#: and "window" (a window centred on each node, GLIC eq. 1)
LOCAL_RULES = ("block", "window")
#: compatibility modes: None (the paper) or "official" (the authors' code)
COMPAT = (None, "official")
#: the authors' cap of the logit scale, ``exp(4.6052)``
OFFICIAL_MAX_TEMPERATURE = math.exp(4.6052)


@dataclass(frozen=True)
class GFAConfig:
    r"""Options of every :class:`~gnn_lic.nn.GFABlock` of a GLIC model (GLIC Sec. 3.3 and 4.1.3).

    Attributes:
        heads (int): attention heads (8).
        local_rule (str): ``"block"`` (default): ``local_window x local_window`` query
            blocks share the ``local_sample x local_sample`` window around them
            (:class:`~gnn_lic.graph.BlockWindow`, the authors' rule: 256 candidates per
            node); ``"window"``: the ``local_window x local_window`` window centred on
            each node (:class:`~gnn_lic.graph.LocalWindow`, GLIC eq. 1 read literally).
        local_window (int): dense sampling size (8).
        local_sample (int): side of the window a query block shares (16, ``"block"`` only).
        global_grid (int): side ``G`` of the global lattice, GLIC eq. 2 (16).
        avg_degree (float): average node degree, GLIC eq. 6 (64).
        iters (int): bisection steps, GLIC Algorithm 1 (5).
        score (str or None): complexity score, a name of :data:`gnn_lic.graph.SCORES`
            (``"rms"``, GLIC eqs. 3-5); ``None``: uniform quotas.
        order (str): layer order, one of :data:`gnn_lic.nn.GFA_ORDERS` (``"local-global"``).
        impl (str): aggregation path of the layers (``"sparse"``).
    """

    heads: int = 8
    local_rule: str = "block"
    local_window: int = 8
    local_sample: int = 16
    global_grid: int = 16
    avg_degree: float = 64
    iters: int = 5
    score: Optional[str] = "rms"
    order: str = "local-global"
    impl: str = "sparse"

    def __post_init__(self):
        if self.local_rule not in LOCAL_RULES:
            raise ValueError(f"local_rule must be one of {LOCAL_RULES}, got {self.local_rule!r}")

    def block_options(self, compat: Optional[str] = None) -> Dict[str, Any]:
        """Keyword arguments of :class:`~gnn_lic.nn.GFABlock` besides its width, depth and MLP ratio.

        ``compat="official"`` configures the same graph API and layers as the authors'
        code: zero-padded block windows, quotas normalised within 64-query groups, the
        blurred and mean-pulled RMS-G score, strict bisection with its upper bound at 1,
        SwinV2 relative-position terms, layer-norm epsilon ``1e-5`` and the logit-scale cap
        ``exp(4.6052)``.
        """
        if compat not in COMPAT:
            raise ValueError(f"compat must be one of {COMPAT}, got {compat!r}")
        common = dict(order=self.order, impl=self.impl, heads=self.heads)
        if compat == "official":
            if self.local_rule != "block" or self.score != "rms":
                raise ValueError("compat='official' fixes local_rule='block' and score='rms'")
            return dict(
                local=BlockWindow(self.local_window, self.local_sample, border="zero", group_quota=True),
                global_=GlobalGrid(self.global_grid, groups=self.local_window),
                selector=AdaptiveDegree(self.avg_degree, score="rms-official", iters=self.iters, bisection="official"),
                position_bias=True, norm_eps=1e-5, max_temperature=OFFICIAL_MAX_TEMPERATURE, **common,
            )  # fmt: skip
        local: CandidateSet = (BlockWindow(self.local_window, self.local_sample) if self.local_rule == "block"
                               else LocalWindow(self.local_window))
        return dict(local=local, global_=GlobalGrid(self.global_grid),
                    selector=AdaptiveDegree(self.avg_degree, score=self.score, iters=self.iters), **common)


def glic_stages(depths: Sequence[int], mlp_ratios: Sequence[float], conv_expansion: float, block: str,
                block_options: Dict[str, Any]) -> StageFactory:
    """The :data:`StageFactory` of a GLIC model: :math:`L_1` conv blocks at 1/2, then at 1/4 and 1/8
    :math:`L_2, L_3` GFA layers (``block="gfa"``, one :class:`~gnn_lic.nn.GFABlock`) or conv blocks
    (``block="cnn"``) with the MLP ratios of their resolution."""
    if block not in BLOCK_KINDS:
        raise ValueError(f"block must be one of {BLOCK_KINDS}, got {block!r}")

    def stage(level: int, channels: int) -> nn.Module:
        if level == 1:
            return nn.Sequential(*(GatedTransformCNN(channels, expansion=conv_expansion) for _ in range(depths[0])))
        depth, ratio = depths[level - 1], mlp_ratios[level - 2]
        if depth == 0:
            return nn.Identity()
        if block == "gfa":
            return GFABlock(channels, depth, mlp_ratio=ratio, **block_options)
        return nn.Sequential(*(GatedTransformCNN(channels, expansion=ratio) for _ in range(depth)))

    return stage


class GLIC(PaddedCompressionModel):
    r"""GLIC codec (CVPR 2026), Fig. 2(a) and Sec. 4.1.3.

    Args:
        channels (sequence of 4 int): :math:`C_1..C_4` (128, 192, 192, 320).
        depths (sequence of 3 int): :math:`L_1..L_3` (3, 5, 5): conv blocks at 1/2,
            GFA layers at 1/4 and at 1/8.
        mlp_ratios (sequence of 2 float): GFA feed-forward expansion at 1/4 and 1/8 (4, 2).
        conv_expansion (float): FFN expansion of the conv blocks at 1/2 resolution (4).
        block (str): ``"gfa"`` (default) or ``"cnn"`` (the conv baseline).
        wavelet (bool): add the auxiliary wavelet branch (WLS/iWLS); see :meth:`ortho_loss`.
        gfa (GFAConfig): options of every GFA block (graphs, heads, layer order).
        compat (str or None): ``"official"`` builds the authors' code's variant of
            every graph block (:meth:`GFAConfig.block_options`) and pads images to 128, as its
            test script does; with the authors' weights
            (:func:`gnn_lic.models.load_official`) it reproduces their model.
        groups (sequence of int): SCCTX channel groups, summing to :math:`C_4`.
        hyper_channels, side_channels, hyper_depth, ctx_min_channels, param_min_channels:
            entropy-model widths, see :func:`~gnn_lic.models.scctx.scctx_latent_codec`.
        rate_lambdas (sequence of float, optional): variable rate (:mod:`~gnn_lic.models.variable_rate`).

    ``forward`` returns ``{"x_hat", "likelihoods": {"y", "z"}}``; training adds
    ``0.1 * ortho_loss()`` (the wavelet branch's orthogonality loss, 0 without it).
    Images of any size are padded (replicate, bottom/right) to :attr:`pad_multiple` = 64.
    """

    pad_multiple = 64
    #: the bands of GLIC's feed-forwards (:data:`gnn_lic.nn.banded.BAND_BYTES` plus a halo) are just above
    #: glibc's adaptive mmap ceiling (32 MiB), so without reuse each one faults in afresh (the README's memory
    #: sections)
    partial_mmap_threshold = 256 << 20

    def __init__(
        self,
        channels: Sequence[int] = (128, 192, 192, 320),
        depths: Sequence[int] = (3, 5, 5),
        mlp_ratios: Sequence[float] = (4.0, 2.0),
        conv_expansion: float = 4,
        block: str = "gfa",
        wavelet: bool = True,
        gfa: GFAConfig = GFAConfig(),
        groups: Sequence[int] = (16, 16, 32, 64, 192),
        hyper_channels: int = 192,
        side_channels: int = 384,
        hyper_depth: int = 2,
        ctx_min_channels: int = 192,
        param_min_channels: int = 384,
        compat: Optional[str] = None,
        rate_lambdas: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if len(channels) != 4 or len(depths) != 3 or len(mlp_ratios) != 2:
            raise ValueError("channels needs 4 values, depths 3 and mlp_ratios 2")
        stage = glic_stages(depths, mlp_ratios, conv_expansion, block, gfa.block_options(compat))
        self.compat = compat
        if compat == "official":
            self.pad_multiple = 128
        self.wavelet = bool(wavelet)
        self.g_a = GLICAnalysis(channels, stage, self.wavelet)
        self.g_s = GLICSynthesis(channels, stage, self.wavelet)
        self.latent_codec = scctx_latent_codec(
            M=channels[3],
            groups=groups,
            hyper_channels=hyper_channels,
            side_channels=side_channels,
            hyper_depth=hyper_depth,
            ctx_min_channels=ctx_min_channels,
            param_min_channels=param_min_channels,
        )
        self._init_rate(rate_lambdas, channels[3])
        self._widths = (channels[1], gfa.avg_degree)

    def map_bytes_per_pixel(self) -> float:
        """The 1/4-resolution graph stage (the layers around it run in bands): about 8 maps of
        :math:`C_2` channels and two graphs of ``1.3 * avg_degree`` edges per node (int64 sources);
        the count of maps fitted to measured peaks (the README's memory sections)."""
        c2, degree = self._widths
        return (8 * c2 * 4 + 2 * 1.3 * degree * 8) / 16


#: per-size defaults, as keywords of :class:`GLIC` and of :class:`GFAConfig`. "paper": GLIC
#: Sec. 4.1.3 (the block-window local graph, see :class:`GFAConfig`; GLIC Table 2 reports 67.20 M parameters); "small": sized to train on
#: a laptop CPU; "tiny": the smallest configuration that runs every code path (tests). ``wavelet`` is on at every
#: size (the released model has it; "small" gained it in checkpoint version 2, see :data:`EARLIER_PRESETS`); pass
#: ``wavelet=False`` to leave the branch out.
GLIC_PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(),
    "small": dict(
        channels=(48, 64, 64, 128),
        depths=(2, 2, 2),
        conv_expansion=2,
        wavelet=True,
        local_rule="window",
        local_window=8,
        global_grid=8,
        avg_degree=16,
        groups=(8, 8, 16, 32, 64),
        hyper_channels=64,
        side_channels=128,
        hyper_depth=1,
        ctx_min_channels=64,
        param_min_channels=128,
    ),
    "tiny": dict(
        channels=(16, 16, 16, 32),
        depths=(1, 2, 2),
        wavelet=True,
        local_rule="window",
        local_window=4,
        global_grid=4,
        avg_degree=4,
        groups=(2, 2, 4, 8, 16),
        hyper_channels=16,
        side_channels=32,
        hyper_depth=1,
        ctx_min_channels=16,
        param_min_channels=32,
    ),
}


#: preset values before a change, for configurations saved without them
#: (:func:`gnn_lic.models.registry.upgrade_config`): up to checkpoint version 1, "small" had no wavelet branch
EARLIER_PRESETS: Dict[int, Dict[str, Dict[str, Any]]] = {1: {"small": {"wavelet": False}}}


#: the keywords of :func:`build_glic` that go into :class:`GFAConfig`
GFA_KEYWORDS = tuple(f.name for f in fields(GFAConfig))


def build_glic(size: str = "paper", **kwargs) -> GLIC:
    """``GLIC`` with ``{**GLIC_PRESETS[size], **kwargs}``; the keywords of :data:`GFA_KEYWORDS` form its :class:`GFAConfig`.

    Options are keywords (JSON-able, as ``create_model`` records them), never a ``GFAConfig``.
    """
    if size not in GLIC_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(GLIC_PRESETS)}")
    if "gfa" in kwargs:
        raise ValueError(f"pass the GFA options as keywords ({', '.join(GFA_KEYWORDS)}), not gfa=")
    options = {**GLIC_PRESETS[size], **kwargs}
    gfa = GFAConfig(**{k: options.pop(k) for k in GFA_KEYWORDS if k in options})
    return GLIC(gfa=gfa, **options)


#: registered variants: name -> options fixed by the variant (GLIC Tables 3 and 4)
GLIC_VARIANTS: Dict[str, Dict[str, Any]] = {
    "glic": {},
    "glic-local": {"order": "local"},
    "glic-global": {"order": "global"},
    "glic-reverse": {"order": "global-local"},
    "glic-score-mean": {"score": "mean"},
    "glic-score-entropy": {"score": "entropy"},
    "glic-score-residual": {"score": "residual"},
    "glic-score-residual-mean": {"score": "residual-mean"},
    "glic-knn": {"score": None},
    "cnn": {"block": "cnn"},
}


def _register(name: str, fixed: Dict[str, Any]) -> None:
    def build(size: str = "paper", **kwargs) -> GLIC:
        clash = sorted(k for k in kwargs if k in fixed and kwargs[k] != fixed[k])
        if clash:
            raise ValueError(f"model {name!r} fixes {clash}; use another registered name instead")
        return build_glic(size, **{**fixed, **kwargs})

    build.__name__ = build.__qualname__ = "build_" + name.replace("-", "_")
    build.__doc__ = f"Build ``{name}`` ({fixed or 'GLIC'}) at ``size``; kwargs override the size preset."
    register_model(name, earlier_presets=EARLIER_PRESETS)(build)


for _name, _fixed in GLIC_VARIANTS.items():
    _register(_name, _fixed)
