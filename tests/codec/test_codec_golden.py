"""Golden files pin the format: committed streams must keep decoding to committed latents.

``golden/`` holds, for a narrow GLIC and GABIC (``make_golden.py`` regenerates them, only
for an intended format change): a checkpoint, the format-2 stream of a 48x80 image, its
decoded latents and its decoded pixels. The latents come out of the fixed-point entropy
path, so they must match bit for bit on any machine; the pixels go through the float
synthesis transform and may move by a rounding step elsewhere.

The committed checkpoints and streams predate two renames of state-dict keys (GLIC's
``g_a.aux`` -> ``g_a.wavelet``; GABIC's flat entropy model -> CompressAI's hyperprior
composition), so these tests also pin that old checkpoints load and old streams decode.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import make_golden  # noqa: E402

from gnn_lic.codec import ModelMismatchError, decode_image, inspect_stream  # noqa: E402
from gnn_lic.models import glic as glic_module  # noqa: E402
from gnn_lic.models.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402


@pytest.mark.parametrize("suffix", list(make_golden.SCHEMES))
@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_golden_stream_decodes_to_the_committed_latents_and_pixels(name, suffix):
    net, _ = load_checkpoint(GOLDEN / f"{name}-tiny.pt")
    data = (GOLDEN / f"{name}-tiny{suffix}.glic").read_bytes()
    info = inspect_stream(data)
    assert info["version"] == 2 and info["fixed_point"] and (info["height"], info["width"]) == (48, 80)
    assert info["arithmetic"] == make_golden.SCHEMES[suffix]
    assert info["overhead_bytes"] <= 32
    latents = make_golden.latents(net, data)
    assert np.array_equal(latents, np.load(GOLDEN / f"{name}-tiny{suffix}.latents.npy"))
    pixels = decode_image(net, data)
    expected = np.asarray(Image.open(GOLDEN / f"{name}-tiny{suffix}.png"))
    diff = np.abs(pixels.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_golden_checkpoints_keep_the_earlier_key_layout():
    """Regenerating the golden files would lose the coverage of earlier layouts: keep these files."""
    glic = read_checkpoint(GOLDEN / "glic-tiny.pt")["state_dict"]
    gabic = read_checkpoint(GOLDEN / "gabic-tiny.pt")["state_dict"]
    assert any(k.startswith("g_a.aux.") for k in glic)
    assert any(k.startswith("latent_codec.h_mean_s.") for k in gabic)


def test_a_preset_edit_changes_the_identity(monkeypatch):
    """Graph hyper-parameters are part of the identity even when create_model's arguments are not."""
    net, _ = load_checkpoint(GOLDEN / "glic-tiny.pt")
    data = (GOLDEN / "glic-tiny.glic").read_bytes()
    decode_image(net, data)  # control
    monkeypatch.setitem(glic_module.GLIC_PRESETS, "tiny", {**glic_module.GLIC_PRESETS["tiny"], "avg_degree": 3})
    edited, _ = load_checkpoint(GOLDEN / "glic-tiny.pt")
    assert edited.model_config == net.model_config  # what create_model was given is the same
    with pytest.raises(ModelMismatchError, match="configuration or weights"):
        decode_image(edited, data)
