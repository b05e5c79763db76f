r"""Variable rate from one model: gain units (Cui et al., "Asymmetric Gained Deep Image
Compression With Continuous Rate Adaptation", CVPR 2021).

A model trained for ``L`` rate-distortion trade-offs :math:`\lambda_1 < \dots < \lambda_L`
holds two ``L x M`` matrices, the gain :math:`G` and the inverse gain :math:`G'`. At
quality level :math:`s` the latent is scaled channel-wise before quantisation and the
decoded latent scaled back (Cui et al. eqs. 4-5):

.. math::
    \bar y = y \odot G_s, \qquad \hat y = Q(\bar y) \odot G'_s .

A larger gain gives a finer effective quantisation step, so a higher rate. Between two
adjacent levels the gains are interpolated geometrically (Cui et al. eq. 8), which gives a
continuous rate:

.. math::
    G_{s + t} = G_s^{1 - t} \, G_{s + 1}^{t}, \qquad t \in [0, 1],

and so is the training trade-off :math:`\lambda_{s+t} = \lambda_s^{1-t}\lambda_{s+1}^{t}`.
The parameters are stored as logarithms, so the interpolation is linear in them and every
gain stays positive.

Qualities are numbered ``1 .. L`` from the lowest rate (smallest :math:`\lambda`), as in
CompressAI's model zoo; any real number in ``[1, L]`` is a valid quality.

Only the entropy-coded *symbols* are decoded bit-exactly (the latent codec sees
:math:`\bar y`); the rescaling by :math:`G'` is float arithmetic on the decoder side,
like the synthesis transform that follows it.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["GainUnits", "QualityLike", "check_rate_lambdas"]

QualityLike = Union[float, int, Sequence[float], Tensor]


def check_rate_lambdas(lambdas: Sequence[float]) -> Tuple[float, ...]:
    """The trade-offs as a tuple of floats; raises ``ValueError`` unless at least two, positive, increasing."""
    values = tuple(float(v) for v in lambdas)
    if len(values) < 2:
        raise ValueError(f"a variable-rate model needs at least 2 lambdas, got {len(values)}")
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"rate lambdas must be positive numbers, got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"rate lambdas must increase strictly, got {values}")
    return values


class GainUnits(nn.Module):
    r"""Per-level channel gains :math:`G` and inverse gains :math:`G'` (module docstring).

    Args:
        channels (int): latent channels :math:`M`.
        lambdas (sequence of float): the trade-offs :math:`\lambda_1 < \dots < \lambda_L`
            the levels are trained for.
        reference (float, optional): the level whose gains start at 1, as a :math:`\lambda`
            (default: the geometric middle of ``lambdas``). The other levels start at
            :math:`(\lambda_s / \lambda_{ref})^{1/2}`: with :math:`D \propto \Delta^2` and
            :math:`dR/d\log\Delta` constant, the optimal step :math:`\Delta` of
            :math:`R + \lambda D` scales as :math:`\lambda^{-1/2}`. Starting from a model
            trained at :math:`\lambda_{ref}`, level ``reference`` is that model unchanged.
    """

    def __init__(self, channels: int, lambdas: Sequence[float], reference: float = None):
        super().__init__()
        self.lambdas = check_rate_lambdas(lambdas)
        log_l = torch.tensor(self.lambdas, dtype=torch.float64).log()
        ref = log_l.mean() if reference is None else torch.tensor(float(reference), dtype=torch.float64).log()
        start = (0.5 * (log_l - ref)).float().unsqueeze(1).expand(-1, int(channels)).clone()
        self.log_gain = nn.Parameter(start)
        self.log_inverse_gain = nn.Parameter(-start)
        self.register_buffer("log_lambdas", log_l.float(), persistent=False)

    @property
    def levels(self) -> int:
        return len(self.lambdas)

    def positions(self, quality: QualityLike, batch: int) -> Tensor:
        """Quality (scalar or one per image) as ``batch`` positions ``quality - 1`` in ``[0, L - 1]``."""
        q = torch.as_tensor(quality, dtype=torch.float32, device=self.log_gain.device).reshape(-1)
        if q.numel() == 1:
            q = q.expand(batch)
        if q.numel() != batch:
            raise ValueError(f"got {q.numel()} qualities for a batch of {batch} images")
        if not bool(torch.isfinite(q).all()) or bool((q < 1).any()) or bool((q > self.levels).any()):
            raise ValueError(f"quality must be a number in [1, {self.levels}], got {q.tolist()}")
        return q - 1

    def _interpolate(self, table: Tensor, pos: Tensor) -> Tensor:
        """Rows of ``table`` (``L x ...``) interpolated linearly at positions ``pos`` (eq. 8 in log space)."""
        lo = pos.floor().long().clamp(max=self.levels - 2)
        t = (pos - lo).to(table.dtype).view(-1, *([1] * (table.dim() - 1)))
        return table[lo] * (1 - t) + table[lo + 1] * t

    def lmbda(self, quality: QualityLike, batch: int = 1) -> Tensor:
        r""":math:`\lambda` of each image's quality (geometric interpolation between levels)."""
        return self._interpolate(self.log_lambdas, self.positions(quality, batch)).exp()

    def scale(self, y: Tensor, quality: QualityLike) -> Tensor:
        r""":math:`\bar y = y \odot G_s` (one quality for the batch or one per image)."""
        g = self._interpolate(self.log_gain, self.positions(quality, y.shape[0])).exp()
        return y * g.to(y.dtype).view(y.shape[0], -1, *([1] * (y.dim() - 2)))

    def unscale(self, y_hat: Tensor, quality: QualityLike) -> Tensor:
        r""":math:`\hat y = \hat{\bar y} \odot G'_s`."""
        g = self._interpolate(self.log_inverse_gain, self.positions(quality, y_hat.shape[0])).exp()
        return y_hat * g.to(y_hat.dtype).view(y_hat.shape[0], -1, *([1] * (y_hat.dim() - 2)))

    def extra_repr(self) -> str:
        return f"channels={self.log_gain.shape[1]}, lambdas={list(self.lambdas)}"
