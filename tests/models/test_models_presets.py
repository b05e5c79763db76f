"""Preset changes: checkpoints written before a preset changed still rebuild the model they hold."""

import pytest
import torch

from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import CHECKPOINT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from gnn_lic.models.glic import GLIC_VARIANTS
from gnn_lic.models.registry import upgrade_config


@pytest.mark.parametrize("name", sorted(GLIC_VARIANTS))
def test_glic_family_small_has_the_wavelet_branch_and_older_configs_did_not(name):
    assert create_model(name, size="small").wavelet
    assert upgrade_config({"name": name, "size": "small"}, 1) == {"name": name, "size": "small", "wavelet": False}
    assert upgrade_config({"name": name, "size": "small"}, CHECKPOINT_VERSION) == {"name": name, "size": "small"}


@pytest.mark.parametrize("config", [
    {"name": "glic", "size": "small", "wavelet": True},  # spelled out: kept
    {"name": "glic", "size": "tiny"},  # its preset did not change
    {"name": "glic", "size": "paper"},
    {"name": "gabic", "size": "small"},
    {"name": "no-such-model", "size": "small"},
])
def test_upgrade_leaves_configs_whose_preset_did_not_change(config):
    assert upgrade_config(config, 1) == config


def _as_version_1(path, net, config):
    """What gnn_lic wrote before the presets changed: version 1, the options as given."""
    torch.save({"format": "gnn_lic-checkpoint", "version": 1, "model_config": config,
                "state_dict": net.state_dict(), "step": 7}, path)


def test_a_version_1_glic_small_checkpoint_loads_without_the_branch_and_saves_it_explicitly(tmp_path):
    torch.manual_seed(0)
    old = create_model("glic", size="small", wavelet=False, rate_lambdas=[0.0017, 0.05])
    old.update(force=True)
    _as_version_1(tmp_path / "v1.pt", old, {"name": "glic", "size": "small", "rate_lambdas": [0.0017, 0.05]})
    ckpt = read_checkpoint(tmp_path / "v1.pt")
    assert ckpt["version"] == 1 and ckpt["model_config"]["wavelet"] is False and ckpt["step"] == 7
    net, _ = load_checkpoint(tmp_path / "v1.pt")
    assert not net.wavelet and net.g_a.wavelet is None
    for key, value in old.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    # saved again it is a current checkpoint that says what it holds
    again, ckpt2 = load_checkpoint(save_checkpoint(tmp_path / "v2.pt", net))
    assert ckpt2["version"] == CHECKPOINT_VERSION and ckpt2["model_config"]["wavelet"] is False
    assert not again.wavelet


def test_a_current_checkpoint_without_the_key_means_todays_preset(tmp_path):
    torch.manual_seed(0)
    net = create_model("cnn", size="small")
    loaded, ckpt = load_checkpoint(save_checkpoint(tmp_path / "now.pt", net))
    assert "wavelet" not in ckpt["model_config"] and loaded.wavelet
    # the same file claiming version 1 describes a model without the branch: it does not fit
    _as_version_1(tmp_path / "claims-v1.pt", net, {"name": "cnn", "size": "small"})
    with pytest.raises(Exception, match="unexpected keys.*wavelet"):
        load_checkpoint(tmp_path / "claims-v1.pt")
