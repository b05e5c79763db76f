"""The zoo of shipped weights: the index format, (name, size, quality) look-ups, sha256 checks."""

import json
import os
from pathlib import Path

import pytest
import torch

import gnn_lic
from gnn_lic.codec import model_fingerprint
from gnn_lic.errors import CheckpointError, NoPretrainedWeightsError
from gnn_lic.models import create_model, list_models
from gnn_lic.models.checkpoint import save_checkpoint
from gnn_lic.models.zoo import (
    QUALITY_LAMBDAS,
    WEIGHTS_DIR_ENV,
    find_weights,
    load_pretrained,
    quality_of,
    read_index,
    shipped_weights,
    weights_dir,
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def trained():
    """A tiny cnn whose weights differ from a fresh create_model (as after training)."""
    torch.manual_seed(5)
    net = create_model("cnn", size="tiny")
    net.update(force=True)
    return net


def test_no_weights_shipped(folder):
    assert read_index() == [] and shipped_weights() == [] and list_models(pretrained=True) == []
    with pytest.raises(NoPretrainedWeightsError) as err:
        create_model("cnn", size="tiny", pretrained=True)
    assert str(err.value) == ("no trained weights are shipped for model 'cnn' size 'tiny'; "
                              "pass --checkpoint CKPT (train one with experiments/run.py)")


def test_load_by_quality_and_list_models(folder, trained, ship):
    ship(save_checkpoint(folder / "cnn-tiny-q4.pt", trained), "cnn", "tiny", (4,))
    ship(folder / "gone.pt", "gabic", "tiny")  # listed, file missing: not shipped
    assert list_models(pretrained=True) == ["cnn"]
    assert [e.file for e in shipped_weights()] == ["cnn-tiny-q4.pt"]
    for quality in (None, 4):
        net = create_model("cnn", size="tiny", pretrained=True, quality=quality)
        assert not net.training and model_fingerprint(net) == model_fingerprint(trained)
    entry, q = find_weights("cnn", "tiny")
    assert q == 4 and entry.record["sha256"] == entry.sha256 and set(entry.record) == {
        "file", "sha256", "command", "data", "metrics"}
    with pytest.raises(CheckpointError, match="gone.pt.*missing"):
        create_model("gabic", size="tiny", pretrained=True)
    with pytest.raises(ValueError, match="pretrained=True"):
        create_model("cnn", size="tiny", quality=4)


def test_unknown_quality(folder, trained, ship):
    ship(save_checkpoint(folder / "a.pt", trained), "cnn", "tiny", (2,))
    with pytest.raises(NoPretrainedWeightsError, match=r"at quality 3 \(shipped qualities: 2\)"):
        create_model("cnn", size="tiny", pretrained=True, quality=3)
    with pytest.raises(ValueError, match="number 1..6"):
        find_weights("cnn", "tiny", 0)


def test_several_qualities_need_a_choice(folder, trained, ship):
    ship(save_checkpoint(folder / "a.pt", trained), "cnn", "tiny", (2,))
    ship(save_checkpoint(folder / "b.pt", trained), "cnn", "tiny", (3, 5))  # a variable-rate checkpoint
    with pytest.raises(NoPretrainedWeightsError, match="qualities 2, 3, 5; choose one"):
        find_weights("cnn", "tiny")
    assert find_weights("cnn", "tiny", 5)[0].file == "b.pt" and find_weights("cnn", "tiny", 2)[0].file == "a.pt"
    index = json.loads((folder / "index.json").read_text())
    index["weights"][1].update(qualities=[2], lambdas=[0.0035])
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="quality 2 twice"):
        read_index()


def test_wrong_sha256_is_refused_in_one_line(folder, trained, ship):
    path = save_checkpoint(folder / "a.pt", trained)
    ship(path, "cnn", "tiny")
    save_checkpoint(path, create_model("cnn", size="tiny"))  # replaced after shipping
    with pytest.raises(CheckpointError) as err:
        create_model("cnn", size="tiny", pretrained=True)
    assert "fail their sha256 check" in str(err.value) and "\n" not in str(err.value)


def test_weights_of_another_configuration_are_refused(folder, trained, ship):
    ship(save_checkpoint(folder / "a.pt", trained), "cnn", "tiny")
    odd = create_model("cnn", size="tiny")
    odd.model_config = {**odd.model_config, "other": 1}  # as if built with another keyword
    with pytest.raises(CheckpointError, match="configuration"):
        load_pretrained(odd)


@pytest.mark.parametrize("index, words", [
    ("{not json", "unreadable"),
    ('{"cnn-tiny": "cnn-tiny.pt"}', "first format.*--upgrade-index"),
    ('{"format": "other", "weights": []}', "not a gnn_lic-weights-index"),
    ('{"format": "gnn_lic-weights-index", "version": 9, "weights": []}', "version 9"),
])
def test_bad_index(folder, index, words):
    (folder / "index.json").write_text(index)
    with pytest.raises(CheckpointError, match=words):
        read_index()


@pytest.mark.parametrize("change, words", [
    ({"file": "../a.pt"}, "invalid file name"),
    ({"sha256": "abc"}, "sha256"),
    ({"qualities": [7]}, "qualities"),
    ({"qualities": []}, "qualities"),
    ({"metric": "lpips"}, "unknown metric"),
    ({"command": None}, "command"),
])
def test_bad_entry(folder, trained, ship, change, words):
    ship(save_checkpoint(folder / "a.pt", trained), "cnn", "tiny")
    index = json.loads((folder / "index.json").read_text())
    index["weights"][0].update(change)
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=words):
        read_index()


def test_quality_of_lambda():
    assert [quality_of(v) for v in QUALITY_LAMBDAS["mse"]] == [1, 2, 3, 4, 5, 6]
    assert quality_of(0.0483) == 6 and quality_of(16.0, "ms-ssim") == 4  # GABIC's top point is GLIC's
    with pytest.raises(ValueError, match="rate points"):
        quality_of(0.1)


def test_default_weights_folder_is_inside_the_package(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    assert weights_dir() == Path(gnn_lic.__file__).resolve().parent / "weights"
    assert os.path.basename(str(weights_dir())) == "weights"


def test_a_variable_rate_entry_serves_every_quality_between_its_levels(folder, ship):
    torch.manual_seed(6)
    lambdas = QUALITY_LAMBDAS["mse"]
    vr = create_model("cnn", size="tiny", rate_lambdas=lambdas)
    vr.update(force=True)
    ship(save_checkpoint(folder / "cnn-tiny-vr.pt", vr), "cnn", "tiny", tuple(range(1, 7)))
    net = create_model("cnn", size="tiny", pretrained=True)
    assert net.qualities == 6 and model_fingerprint(net) == model_fingerprint(vr)
    assert getattr(net, "default_quality", None) is None  # compress codes at the top level
    net = create_model("cnn", size="tiny", pretrained=True, quality=2.5)
    assert net.default_quality == 2.5
    assert find_weights("cnn", "tiny", 6.0)[1] == 6.0
    with pytest.raises(ValueError, match="1..6"):
        find_weights("cnn", "tiny", 6.5)


def test_fixed_rate_entries_refuse_a_quality_between_them(folder, trained, ship):
    ship(save_checkpoint(folder / "cnn-tiny-q4.pt", trained), "cnn", "tiny", (4,))
    with pytest.raises(ValueError, match="between the shipped fixed-rate qualities"):
        find_weights("cnn", "tiny", 3.5)


def test_an_entry_names_the_options_its_checkpoint_was_built_with(folder, ship):
    torch.manual_seed(6)
    bare = create_model("cnn", size="tiny", wavelet=False)
    bare.update(force=True)
    ship(save_checkpoint(folder / "bare.pt", bare), "cnn", "tiny")
    with pytest.raises(CheckpointError, match="configuration"):  # today's preset has the branch
        create_model("cnn", size="tiny", pretrained=True)
    index = json.loads((folder / "index.json").read_text())
    index["weights"][0]["options"] = {"wavelet": False}
    (folder / "index.json").write_text(json.dumps(index))
    entry, _ = find_weights("cnn", "tiny")
    assert entry.model_kwargs == {"wavelet": False} and entry.to_json()["options"] == {"wavelet": False}
    net = create_model("cnn", size="tiny", pretrained=True)
    assert not net.wavelet and model_fingerprint(net) == model_fingerprint(bare)


@pytest.mark.parametrize("options", [[1], {"size": "small"}, {"rate_lambdas": [0.1]}])
def test_bad_entry_options(folder, trained, ship, options):
    ship(save_checkpoint(folder / "a.pt", trained), "cnn", "tiny")
    index = json.loads((folder / "index.json").read_text())
    index["weights"][0]["options"] = options
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="options"):
        read_index()
