import numpy as np
from PIL import Image

from gnn_lic.evaluation.plot import plot_rd, rd_figure
from gnn_lic.evaluation.results import make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curves():
    r = np.array([0.1, 0.2, 0.4, 0.8])
    return {
        "codec-a": make_results("codec-a", r, 30 + 3 * np.log2(r / 0.1), [0.9, 0.95, 0.97, 0.99]),
        "codec-b": make_results("codec-b", r * 1.2, 30 + 3 * np.log2(r / 0.1)),
    }


def test_plot_writes_valid_png(tmp_path):
    path = plot_rd(_curves(), metric="psnr-rgb", path=tmp_path / "out" / "rd.png", title="t")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (840, 600)


def test_figure_has_legend_and_axis_labels():
    fig = rd_figure(_curves(), metric="psnr-rgb")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["codec-a", "codec-b"]
    assert "bpp" in ax.get_xlabel() and "dB" in ax.get_ylabel()
    # ms-ssim-db: derived for codec-a, codec-b has no MS-SSIM and is left out
    fig = rd_figure(_curves(), metric="ms-ssim-db")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["codec-a"]
    assert "MS-SSIM" in ax.get_ylabel() and "dB" in ax.get_ylabel()
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [10, 13.0103, 15.2288, 20], atol=1e-3)
