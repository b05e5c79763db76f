import numpy as np
import pytest
import scipy.interpolate

from gnn_lic.evaluation.bd import (
    bd_psnr,
    bd_rate,
    bd_table,
    format_bd_table,
    pchip_eval,
    pchip_integral,
    pchip_slopes,
)

# A smooth, concave, non-polynomial synthetic anchor curve.
RATES = np.array([0.08, 0.15, 0.3, 0.55, 0.9, 1.5])
PSNR = 26.0 + 9.0 * np.log10(RATES / 0.05) - 0.6 * np.log10(RATES / 0.05) ** 2


def _trapezoid(y, x):
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _brute_bd_rate(ar, aq, tr, tq, method, n=200_001):
    """Independent reference: dense trapezoidal integration of scipy/numpy interpolants."""
    lo, hi = max(aq.min(), tq.min()), min(aq.max(), tq.max())
    q = np.linspace(lo, hi, n)

    def interp(qs, rs):
        o = np.argsort(qs)
        if method == "pchip":
            return scipy.interpolate.PchipInterpolator(qs[o], np.log(rs[o]))(q)
        return np.polyval(np.polyfit(qs, np.log(rs), 3), q)

    diff = interp(tq, tr) - interp(aq, ar)
    return (np.exp(_trapezoid(diff, q) / (hi - lo)) - 1) * 100


def _brute_bd_psnr(ar, aq, tr, tq, method, n=200_001):
    la, lt = np.log(ar), np.log(tr)
    lo, hi = max(la.min(), lt.min()), min(la.max(), lt.max())
    x = np.linspace(lo, hi, n)

    def interp(lr, qs):
        if method == "pchip":
            return scipy.interpolate.PchipInterpolator(lr, qs)(x)
        return np.polyval(np.polyfit(lr, qs, 3), x)

    return _trapezoid(interp(lt, tq) - interp(la, aq), x) / (hi - lo)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_scaled_rates_give_exact_saving(method):
    assert bd_rate(RATES, PSNR, RATES * 0.8, PSNR, method) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES * 1.25, PSNR, method) == pytest.approx(25.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES, PSNR, method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_psnr_shift_gives_exact_bd_psnr(method):
    assert bd_psnr(RATES, PSNR, RATES, PSNR + 0.5, method) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATES, PSNR, RATES, PSNR - 1.25, method) == pytest.approx(-1.25, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_against_brute_force(method):
    # A test curve with different sample points, shifted and tilted.
    tr = np.array([0.06, 0.12, 0.25, 0.5, 0.8, 1.2, 2.0])
    tq = 26.0 + 9.0 * np.log10(tr / 0.05) - 0.6 * np.log10(tr / 0.05) ** 2 + 0.3 + 0.2 * np.log(tr)
    got = bd_rate(RATES, PSNR, tr, tq, method)
    ref = _brute_bd_rate(RATES, PSNR, tr, tq, method)
    assert got == pytest.approx(ref, abs=1e-6)
    assert got < 0  # the test curve is better
    got_q = bd_psnr(RATES, PSNR, tr, tq, method)
    assert got_q == pytest.approx(_brute_bd_psnr(RATES, PSNR, tr, tq, method), abs=1e-6)
    assert got_q > 0


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_symmetry_and_order_invariance(method):
    tr = RATES * np.array([0.9, 0.85, 0.8, 0.8, 0.82, 0.9])
    a = bd_rate(RATES, PSNR, tr, PSNR, method) / 100
    b = bd_rate(tr, PSNR, RATES, PSNR, method) / 100
    assert (1 + a) * (1 + b) == pytest.approx(1.0, abs=1e-12)
    perm = np.array([3, 0, 5, 1, 4, 2])  # input order does not matter
    assert bd_rate(RATES[perm], PSNR[perm], tr, PSNR, method) == pytest.approx(a * 100, abs=1e-12)


def test_pchip_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = np.cumsum(rng.uniform(0.1, 2.0, 7))
        y = np.cumsum(rng.normal(0, 1, 7))  # not monotone: exercises zero slopes
        ref = scipy.interpolate.PchipInterpolator(x, y)
        np.testing.assert_allclose(pchip_slopes(x, y), ref.derivative()(x), atol=1e-12)
        xq = np.linspace(x[0], x[-1], 57)
        np.testing.assert_allclose(pchip_eval(x, y, xq), ref(xq), atol=1e-12)
        lo, hi = x[0] + 0.3, x[-1] - 0.7
        assert pchip_integral(x, y, lo, hi) == pytest.approx(ref.integrate(lo, hi), abs=1e-10)
    # two points: a straight line
    assert pchip_integral([0.0, 2.0], [1.0, 3.0], 0.0, 2.0) == pytest.approx(4.0)


def test_validation_errors():
    r, q = RATES, PSNR
    with pytest.raises(ValueError, match="at least 4 points"):
        bd_rate(r[:3], q[:3], r, q, "cubic")
    with pytest.raises(ValueError, match="at least 2 points"):
        bd_rate(r[:1], q[:1], r, q, "pchip")
    assert np.isfinite(bd_rate(r[:2], q[:2], r, q, "pchip"))
    bad_q = q.copy()
    bad_q[2] = bad_q[1] - 0.1
    with pytest.raises(ValueError, match="increase strictly"):
        bd_rate(r, q, r, bad_q)
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(r, q, r * 10, q + 20)
    with pytest.raises(ValueError, match="do not overlap"):
        bd_psnr(r, q, r * 100, q)
    with pytest.raises(ValueError, match="positive"):
        bd_rate(-r, q, r, q)
    with pytest.raises(ValueError, match="distinct"):
        bd_rate(np.r_[r, r[-1]], np.r_[q, q[-1] + 1], r, q)
    with pytest.raises(ValueError, match="rates but"):
        bd_rate(r, q[:-1], r, q)
    with pytest.raises(ValueError, match="finite"):
        bd_rate(np.r_[r, np.nan], np.r_[q, 40.0], r, q)
    with pytest.raises(ValueError, match="unknown method"):
        bd_rate(r, q, r, q, "akima")


def test_bd_table_synthetic():
    curves = {
        "anchor": {"name": "anchor", "results": {"bpp": list(RATES), "psnr-rgb": list(PSNR)}},
        "better": {"results": {"bpp": list(RATES * 0.8), "psnr-rgb": list(PSNR)}},
        "no-msssim": {"bpp": list(RATES), "psnr-rgb": list(PSNR)},
        "disjoint": {"bpp": list(RATES * 100), "psnr-rgb": list(PSNR + 30)},
    }
    table = bd_table(curves, "anchor")
    assert table["anchor"]["bd_rate"] == pytest.approx(0.0)
    assert table["better"]["bd_rate"] == pytest.approx(-20.0)
    assert table["better"]["error"] is None
    assert np.isnan(table["disjoint"]["bd_rate"]) and "overlap" in table["disjoint"]["error"]
    text = format_bd_table(table, "anchor")
    assert "-20.00" in text and "better" in text and "n/a" in text
    with pytest.raises(KeyError, match="ms-ssim-db"):  # the anchor must have the metric
        bd_table(curves, "anchor", metric="ms-ssim-db")
    msssim = 1 - 10 ** (-(PSNR - 14) / 10)  # some increasing MS-SSIM values
    curves["anchor"]["results"]["ms-ssim-rgb"] = list(msssim)
    curves["better-ms"] = {"bpp": list(RATES * 0.9), "ms-ssim-rgb": list(msssim)}
    t2 = bd_table(curves, "anchor", metric="ms-ssim-db")
    assert np.isnan(t2["better"]["bd_rate"]) and "ms-ssim-db" in t2["better"]["error"]
    assert t2["better"]["n_points"] == len(RATES)
    assert t2["better-ms"]["bd_rate"] == pytest.approx(-10.0)
    with pytest.raises(KeyError):
        bd_table(curves, "missing")


def test_point_rate_difference_matches_the_bd_rate_of_a_shifted_curve():
    """A test point on the anchor curve scaled by 0.8 in rate saves exactly 20%."""
    from gnn_lic.evaluation.bd import point_quality_difference, point_rate_difference

    rates = [0.1, 0.2, 0.4, 0.8]
    psnr = [27.0, 29.5, 32.0, 34.0]
    # at a knot the pchip interpolant is exact
    assert point_rate_difference(rates, psnr, 0.8 * 0.4, 32.0) == pytest.approx(-20.0)
    assert point_quality_difference(rates, psnr, 0.2, 30.0) == pytest.approx(0.5)
    # between knots: against a brute-force evaluation of the same interpolant
    from gnn_lic.evaluation.bd import pchip_eval

    q = 30.7
    ref = np.exp(pchip_eval(np.array(psnr), np.log(rates), np.array([q]))[0])
    assert point_rate_difference(rates, psnr, 0.3, q) == pytest.approx((0.3 / ref - 1) * 100)
    with pytest.raises(ValueError, match="outside"):
        point_rate_difference(rates, psnr, 0.3, 40.0)


def test_bd_table_single_point_curve():
    from gnn_lic.evaluation import bd_table

    anchor = {"name": "a", "results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [27.0, 29.5, 32.0, 34.0]}}
    one = {"name": "m", "results": {"bpp": [0.32], "psnr-rgb": [32.0]}}
    t = bd_table({"a": anchor, "m": one}, "a")
    assert t["m"]["single_point"] and t["m"]["bd_rate"] == pytest.approx(-20.0)
    assert t["a"]["bd_rate"] == pytest.approx(0.0)


def test_bd_table_single_point_with_only_one_limit():
    from gnn_lic.evaluation import bd_table, format_bd_table
    from gnn_lic.evaluation.bd import point_quality_difference

    anchor = {"name": "a", "results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [27.0, 29.5, 32.0, 34.0]}}
    low = {"name": "m", "results": {"bpp": [0.3], "psnr-rgb": [25.0]}}  # rate inside, quality below
    far = {"name": "f", "results": {"bpp": [5.0], "psnr-rgb": [20.0]}}  # neither inside
    t = bd_table({"a": anchor, "m": low, "f": far}, "a")
    assert np.isnan(t["m"]["bd_rate"]) and t["m"]["error"] is None and "quality" in t["m"]["note"]
    assert t["m"]["bd_quality"] == pytest.approx(point_quality_difference([0.1, 0.2, 0.4, 0.8],
                                                                          [27.0, 29.5, 32.0, 34.0], 0.3, 25.0))
    assert t["m"]["bd_quality"] < -5
    assert t["f"]["error"] and "rate" in t["f"]["error"] and "quality" in t["f"]["error"]
    text = format_bd_table(t, "a")
    row = next(line for line in text.splitlines() if line.startswith("m "))
    assert "n/a" in row and f"{t['m']['bd_quality']:.3f}" in row


def test_bd_table_curve_overlapping_in_rate_only():
    """A low curve shares the anchor's rates but none of its qualities: BD-quality exists, BD-rate does not."""
    from gnn_lic.evaluation import bd_quality

    anchor = {"name": "a", "results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [27.0, 29.5, 32.0, 34.0]}}
    low = {"name": "m", "results": {"bpp": [0.15, 0.3, 0.6], "psnr-rgb": [20.0, 22.0, 24.0]}}
    t = bd_table({"a": anchor, "m": low}, "a")
    row = t["m"]
    assert row["error"] is None and np.isnan(row["bd_rate"]) and "overlap" in row["note"]
    assert row["bd_quality"] == pytest.approx(bd_quality([0.1, 0.2, 0.4, 0.8], [27.0, 29.5, 32.0, 34.0],
                                                         [0.15, 0.3, 0.6], [20.0, 22.0, 24.0]))
    assert row["bd_quality"] < -5
    line = [x for x in format_bd_table(t, "a").splitlines() if x.startswith("m ")][0]
    assert "n/a" in line and "overlap" in line and f"{row['bd_quality']:.3f}" in line
