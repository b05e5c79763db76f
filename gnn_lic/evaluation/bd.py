"""Bjontegaard delta metrics (BD-rate, BD-PSNR).

Definitions (G. Bjontegaard, VCEG-M33, 2001, and the piecewise-cubic variant adopted
later, e.g. in VCEG-AL22 / JVET CTC spreadsheets):

* **BD-rate** -- express log-rate as a function of quality for each curve, integrate
  the difference ``log R_test(q) - log R_anchor(q)`` over the quality interval where
  both curves have data, divide by its length, and report
  ``(exp(mean difference) - 1) * 100`` percent. Negative = the test codec needs fewer
  bits for the same quality.
* **BD-PSNR** (BD-quality) -- express quality as a function of log-rate, integrate
  ``Q_test - Q_anchor`` over the common log-rate interval and divide by its length
  (dB for PSNR; the unit of the quality metric in general).

Interpolation methods:

* ``"cubic"``: Bjontegaard's original least-squares fit of a 3rd-order polynomial
  (exact interpolation for 4 points), integrated analytically. Needs >= 4 points.
* ``"pchip"``: piecewise cubic Hermite interpolation with shape-preserving slopes
  (Fritsch & Carlson 1980 with Brodlie's weighted harmonic mean at interior knots and
  the three-point, shape-constrained end-slope rule), integrated exactly piece by
  piece. Needs >= 2 points; never overshoots the data, so it is the more robust of the
  two. Implemented here from its definition (no scipy dependency).

The logarithm base does not matter (both integrals are invariant to a linear change
of the log-rate axis); natural logs are used.

Inputs are validated: finite values, positive rates, equal lengths, enough points,
strictly increasing rate and quality after sorting by rate, and an overlapping
interval.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .results import get_metric, results_of

__all__ = [
    "bd_rate",
    "bd_psnr",
    "bd_quality",
    "bd_table",
    "point_rate_difference",
    "point_quality_difference",
    "format_bd_table",
    "pchip_slopes",
    "pchip_eval",
    "pchip_integral",
    "METHODS",
]

METHODS = ("pchip", "cubic")
_MIN_POINTS = {"pchip": 2, "cubic": 4, "point": 1}


# ---------------------------------------------------------------------------
# PCHIP
# ---------------------------------------------------------------------------
def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shape-preserving knot derivatives for piecewise cubic Hermite interpolation.

    ``x`` must be strictly increasing. Interior knots: 0 where the neighbouring secant
    slopes differ in sign or either is 0, else Brodlie's weighted harmonic mean
    ``(w1 + w2) / (w1/d_{k-1} + w2/d_k)`` with ``w1 = 2h_k + h_{k-1}``,
    ``w2 = h_k + 2h_{k-1}``. End knots: the one-sided three-point estimate, set to 0
    if its sign differs from the first secant, and limited to 3x the secant when the
    secants change sign. Two points give the straight line.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]
        return d
    for k in range(1, n - 1):
        a, b = delta[k - 1], delta[k]
        if a == 0 or b == 0 or np.sign(a) != np.sign(b):
            d[k] = 0.0
        else:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / a + w2 / b)

    def end(h0, h1, d0, d1):
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(s) != np.sign(d0):
            return 0.0
        if np.sign(d0) != np.sign(d1) and abs(s) > abs(3 * d0):
            return 3 * d0
        return s

    d[0] = end(h[0], h[1], delta[0], delta[1])
    d[-1] = end(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _hermite_coeffs(x, y, d):
    """Per-interval polynomial coefficients in t = x - x_k: c0 + c1 t + c2 t^2 + c3 t^3."""
    h = np.diff(x)
    delta = np.diff(y) / h
    c0 = y[:-1]
    c1 = d[:-1]
    c2 = (3 * delta - 2 * d[:-1] - d[1:]) / h
    c3 = (d[:-1] + d[1:] - 2 * delta) / h**2
    return c0, c1, c2, c3


def pchip_eval(x, y, xq) -> np.ndarray:
    """Evaluate the PCHIP interpolant of (x, y) at ``xq`` (inside [x0, x_{n-1}])."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xq = np.asarray(xq, dtype=np.float64)
    c0, c1, c2, c3 = _hermite_coeffs(x, y, pchip_slopes(x, y))
    k = np.clip(np.searchsorted(x, xq, side="right") - 1, 0, x.size - 2)
    t = xq - x[k]
    return c0[k] + t * (c1[k] + t * (c2[k] + t * c3[k]))


def pchip_integral(x, y, lo: float, hi: float) -> float:
    """Exact integral of the PCHIP interpolant of (x, y) from ``lo`` to ``hi``.

    ``x[0] <= lo <= hi <= x[-1]`` is required (no extrapolation).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not (x[0] - 1e-12 * abs(x[0]) <= lo <= hi <= x[-1] + 1e-12 * abs(x[-1])):
        raise ValueError(f"integration interval [{lo}, {hi}] outside data [{x[0]}, {x[-1]}]")
    c0, c1, c2, c3 = _hermite_coeffs(x, y, pchip_slopes(x, y))

    def prim(k, t):
        return t * (c0[k] + t * (c1[k] / 2 + t * (c2[k] / 3 + t * c3[k] / 4)))

    total = 0.0
    for k in range(x.size - 1):
        a = max(lo, x[k])
        b = min(hi, x[k + 1])
        if b > a:
            total += prim(k, b - x[k]) - prim(k, a - x[k])
    return float(total)


# ---------------------------------------------------------------------------
# Validation and the BD integrals
# ---------------------------------------------------------------------------
def _prepare(rates, quality, label: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.size != q.size:
        raise ValueError(f"{label}: {r.size} rates but {q.size} quality values")
    need = _MIN_POINTS[method]
    if r.size < need:
        raise ValueError(f"{label}: method {method!r} needs at least {need} points, got {r.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"{label}: rates and quality must be finite")
    if np.any(r <= 0):
        raise ValueError(f"{label}: rates must be positive")
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    if np.any(np.diff(r) <= 0):
        raise ValueError(f"{label}: rates must be distinct (duplicate rate points)")
    if np.any(np.diff(q) <= 0):
        raise ValueError(
            f"{label}: quality must increase strictly with rate (non-monotonic RD curve)"
        )
    return np.log(r), q


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def _integral(x, y, lo, hi, method) -> float:
    if method == "pchip":
        return pchip_integral(x, y, lo, hi)
    coeffs = np.polyfit(x, y, 3)
    prim = np.polyint(coeffs)
    return float(np.polyval(prim, hi) - np.polyval(prim, lo))


def _overlap(a: np.ndarray, b: np.ndarray, what: str) -> tuple[float, float]:
    lo = max(a.min(), b.min())
    hi = min(a.max(), b.max())
    if not hi > lo:
        raise ValueError(
            f"the curves do not overlap in {what} "
            f"(anchor [{a.min():.4g}, {a.max():.4g}], test [{b.min():.4g}, {b.max():.4g}])"
        )
    return float(lo), float(hi)


def _mean_gap(anchor_rates, anchor_quality, test_rates, test_quality, method: str, over: str) -> float:
    """Mean of ``test - anchor`` over the common interval: of log-rate as a function of
    quality (``over="quality"``, BD-rate) or of quality over log-rate (``"rate"``, BD-quality)."""
    _check_method(method)
    la, qa = _prepare(anchor_rates, anchor_quality, "anchor", method)
    lt, qt = _prepare(test_rates, test_quality, "test", method)
    if over == "quality":
        (xa, ya), (xt, yt) = (qa, la), (qt, lt)
    else:
        (xa, ya), (xt, yt) = (la, qa), (lt, qt)
    lo, hi = _overlap(xa, xt, over)
    return (_integral(xt, yt, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rates: Sequence[float],
    test_psnr: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-rate of the test curve against the anchor, in percent (negative = saving).

    Works for any quality metric (PSNR, MS-SSIM dB, ...) passed as ``*_psnr``.
    """
    return (math.exp(_mean_gap(anchor_rates, anchor_psnr, test_rates, test_psnr, method, "quality")) - 1.0) * 100.0


def bd_quality(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """Average quality gain of the test curve over the common log-rate interval."""
    return _mean_gap(anchor_rates, anchor_quality, test_rates, test_quality, method, "rate")


def bd_psnr(
    anchor_rates: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rates: Sequence[float],
    test_psnr: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-PSNR in dB (positive = the test codec is better at the same rate)."""
    return bd_quality(anchor_rates, anchor_psnr, test_rates, test_psnr, method)


def point_rate_difference(
    anchor_rates: Sequence[float], anchor_quality: Sequence[float], rate: float, quality: float
) -> float:
    """Rate difference of one test point against the anchor at equal quality, in percent.

    The single-point limit of the BD-rate: the anchor's log-rate is interpolated (pchip)
    at the test point's quality, and ``(rate / R_anchor(quality) - 1) * 100`` is returned
    (negative = the test point needs fewer bits). The quality must lie inside the anchor's
    range (no extrapolation).
    """
    la, qa = _prepare(anchor_rates, anchor_quality, "anchor", "pchip")
    _prepare([rate], [quality], "test", "point")
    if not qa[0] <= quality <= qa[-1]:
        raise ValueError(f"quality {quality:.4g} outside the anchor's range [{qa[0]:.4g}, {qa[-1]:.4g}]")
    return (math.exp(math.log(rate) - float(pchip_eval(qa, la, np.array([quality]))[0])) - 1.0) * 100.0


def point_quality_difference(
    anchor_rates: Sequence[float], anchor_quality: Sequence[float], rate: float, quality: float
) -> float:
    """Quality difference of one test point against the anchor at equal rate (pchip in log-rate)."""
    la, qa = _prepare(anchor_rates, anchor_quality, "anchor", "pchip")
    _prepare([rate], [quality], "test", "point")
    lr = math.log(rate)
    if not la[0] <= lr <= la[-1]:
        raise ValueError(f"rate {rate:.4g} outside the anchor's range [{math.exp(la[0]):.4g}, {math.exp(la[-1]):.4g}]")
    return quality - float(pchip_eval(la, qa, np.array([lr]))[0])


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def bd_table(
    curves: Mapping[str, Mapping],
    anchor_name: str,
    metric: str = "psnr-rgb",
    method: str = "pchip",
    rate_key: str = "bpp",
) -> dict[str, dict]:
    """BD-rate and BD-quality of every curve against ``curves[anchor_name]``.

    ``curves`` maps names to results documents (or bare ``results`` mappings). For
    each name returns ``{"bd_rate": %, "bd_quality": <metric units>, "n_points": n,
    "error": None or message}``; a curve that cannot be compared (missing metric, too
    few points, no overlap, ...) gets NaNs and the reason in ``error``. The anchor
    itself is listed with zeros. A curve of a single point (one trained rate) gets the
    single-point limits instead, :func:`point_rate_difference` and
    :func:`point_quality_difference` (rate difference at equal quality, quality difference
    at equal rate), and ``"single_point": True``. When only one of the two exists (the
    curves overlap in rate but not in quality, or the other way round), the other is NaN
    and ``"note"`` says why.
    """
    _check_method(method)
    if anchor_name not in curves:
        raise KeyError(f"anchor {anchor_name!r} not among curves {sorted(curves)}")
    anchor = curves[anchor_name]
    ar = np.asarray(results_of(anchor)[rate_key], dtype=np.float64)
    aq = get_metric(anchor, metric)
    out: dict[str, dict] = {}
    for name, doc in curves.items():
        row = {"bd_rate": math.nan, "bd_quality": math.nan, "n_points": 0, "error": None}
        try:
            tr = np.asarray(results_of(doc)[rate_key], dtype=np.float64)
            row["n_points"] = int(tr.size)
            tq = get_metric(doc, metric)
            if tr.size == 1 and name != anchor_name:
                row["single_point"] = True
                ways = (("bd_rate", lambda: point_rate_difference(ar, aq, float(tr[0]), float(tq[0]))),
                        ("bd_quality", lambda: point_quality_difference(ar, aq, float(tr[0]), float(tq[0]))))
            else:
                ways = (("bd_rate", lambda: bd_rate(ar, aq, tr, tq, method)),
                        ("bd_quality", lambda: bd_quality(ar, aq, tr, tq, method)))
            missing = []  # either may exist alone: the curves may overlap in rate but not in quality
            for key, way in ways:
                try:
                    row[key] = way()
                except ValueError as e:
                    missing.append(str(e))
            if len(missing) == 2:
                raise ValueError("; ".join(dict.fromkeys(missing)))
            row["note"] = missing[0] if missing else None
        except (KeyError, ValueError) as e:
            row["error"] = str(e).strip("'\"")
        out[name] = row
    return out


def format_bd_table(
    table: Mapping[str, Mapping], anchor_name: str, metric: str = "psnr-rgb", method: str = "pchip"
) -> str:
    """Plain-text rendering of :func:`bd_table` output."""
    qname = {"psnr-rgb": "BD-PSNR [dB]", "ms-ssim-db": "BD-MS-SSIM [dB]"}.get(
        metric, f"BD-{metric}"
    )
    width = max([len("name")] + [len(n) for n in table])
    lines = [
        f"anchor: {anchor_name}   metric: {metric}   method: {method}",
        f"{'name':<{width}}  {'BD-rate [%]':>12}  {qname:>16}  points",
    ]
    for name, row in table.items():
        if row.get("error"):
            lines.append(f"{name:<{width}}  {'n/a':>12}  {'n/a':>16}  {row['n_points']:>6}  ({row['error']})")
        else:
            rate = f"{row['bd_rate']:.2f}" if math.isfinite(row["bd_rate"]) else "n/a"
            quality = f"{row['bd_quality']:.3f}" if math.isfinite(row["bd_quality"]) else "n/a"
            note = f"  ({row['note']})" if row.get("note") else ""
            if row.get("single_point"):
                note = "  (one point: difference at equal quality / rate" + (
                    f"; {row['note']})" if row.get("note") else ")")
            lines.append(f"{name:<{width}}  {rate:>12}  {quality:>16}  {row['n_points']:>6}{note}")
    return "\n".join(lines)
