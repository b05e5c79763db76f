"""model_fingerprint: stable for equal weights, different for any changed weight."""

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels as cm  # noqa: E402

from gnn_lic.codec import CodecError, model_fingerprint  # noqa: E402
from gnn_lic.codec.fingerprint import config_hash  # noqa: E402
from gnn_lic.models.registry import canonical_config_json  # noqa: E402


def test_equal_weights_equal_fingerprint():
    a, b = cm.make(seed=0), cm.make(seed=0)
    fa = model_fingerprint(a)
    assert len(fa) == 64 and int(fa, 16) >= 0
    assert fa == model_fingerprint(b)
    assert fa == model_fingerprint(a)  # cached path
    assert fa != model_fingerprint(cm.make(seed=1))
    assert fa != model_fingerprint(cm.make(size="small"))


def test_every_state_entry_changes_the_fingerprint():
    net = cm.make()
    base = model_fingerprint(net)
    state = net.state_dict()
    assert len(state) > 50
    checked = 0
    for key, t in state.items():
        if t.numel() == 0:
            continue
        flat = t.view(-1)
        old = flat[-1].clone()
        with torch.no_grad():
            flat[-1] += 1  # in place: same tensor object, only the version counter moves
        assert model_fingerprint(net) != base, key
        with torch.no_grad():
            flat[-1] = old
        assert model_fingerprint(net) == base, key
        checked += 1
    assert checked == sum(1 for t in state.values() if t.numel())


def test_replaced_and_reloaded_weights():
    net = cm.make()
    base = model_fingerprint(net)
    p = net.g_a[0].weight
    p.data = p.data.clone()  # a new tensor with the same values
    assert model_fingerprint(net) == base
    p.data = p.data + 1
    assert model_fingerprint(net) != base
    seven = cm.make(seed=7).state_dict()
    net.load_state_dict(seven)
    twin = cm.make()  # same config as net (no seed kwarg), other weights
    assert model_fingerprint(twin) != model_fingerprint(net)
    twin.load_state_dict(seven)
    assert model_fingerprint(twin) == model_fingerprint(net)


def test_config_is_part_of_the_fingerprint():
    net = cm.make()
    base, cfg = model_fingerprint(net), config_hash(net)
    net.model_config = {**net.model_config, "lmbda": 0.013}
    assert model_fingerprint(net) != base and config_hash(net) != cfg
    assert canonical_config_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    net.model_config = {"name": "x", "size": "tiny", "bad": object()}
    with pytest.raises(CodecError):
        model_fingerprint(net)
    del net.model_config
    with pytest.raises(CodecError):
        model_fingerprint(net)


def test_inference_tensors_are_hashed_correctly():
    net = cm.make()
    base = model_fingerprint(net)
    with torch.inference_mode():
        net.update(force=True)  # CDF buffers become inference tensors: no caching
    assert net.entropy_bottleneck._quantized_cdf.is_inference()
    assert model_fingerprint(net) == base
    with torch.inference_mode():
        net.entropy_bottleneck._quantized_cdf[0, 0] += 1
    assert model_fingerprint(net) != base


def test_dtype_changes_the_fingerprint():
    net = cm.make()
    base = model_fingerprint(net)
    net.double()
    assert model_fingerprint(net) != base
