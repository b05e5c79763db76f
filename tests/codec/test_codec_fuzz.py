"""A short structure-aware fuzzing run (the long one: ``python -m gnn_lic.codec.fuzz --cases 10000``)."""

import random
import time

import numpy as np
import pytest

from gnn_lic.codec import CorruptStreamError, decode_image, encode_image
from gnn_lic.codec.container import parse_stream
from gnn_lic.codec.fuzz import build_model, mutate, run_fuzz, seed_streams


@pytest.fixture(scope="module")
def net():
    return build_model("gabic", pretrained=False)


def test_mutations_keep_the_checksum_valid_when_they_say_so(net):
    rng = random.Random(1)
    seeds = seed_streams(net)
    kinds = set()
    for _ in range(200):
        name, data, crc_valid = mutate(rng, rng.choice(seeds))
        kinds.add(name)
        if crc_valid:
            parse_stream(data)  # reaches the model: no CorruptStreamError from the container
        else:
            with pytest.raises(CorruptStreamError):
                parse_stream(data)
    assert {"string", "image-size", "shape", "bytes-flip"} <= kinds


def test_a_tiny_file_claiming_a_huge_image_fails_fast(net):
    data = encode_image(net, np.zeros((1, 1, 3), np.uint8))
    p = parse_stream(data)
    from gnn_lic.codec.container import pack_stream

    huge = pack_stream(model_name=p.model_name, model_size=p.model_size, identity=p.identity,
                       fixed_point=p.fixed_point, w8=p.w8, height=1 << 20, width=1 << 20, shape=None, strings=p.strings)
    t0 = time.perf_counter()
    with pytest.raises(CorruptStreamError, match="limit"):
        decode_image(net, huge)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("model, budget", [("glic", 8.0), ("gabic", 6.0)])
def test_short_fuzzing_run_finds_no_bug(model, budget):
    report = run_fuzz(model, cases=100_000, seed=0, timeout=5.0, memory_gb=8.0, budget_s=budget)
    assert report["cases"] >= 20
    assert not any(report["bugs"].values()), report["examples"]
    assert report["outcomes"].get("codec-error", 0) > 0 and report["outcomes"].get("decoded", 0) > 0
