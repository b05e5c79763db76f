"""``python -m gnn_lic.bench.entropy``: fixed-point (w8, fx16) vs float encode/decode times, side by side."""

import json

from gnn_lic.bench.entropy import main


def test_prints_every_path_for_a_smoke_run(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["--models", "glic", "--size", "tiny", "--random-init", "--rounds", "1", "--height", "64",
                 "--width", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "w8 / fx16 vs float" in text and "latent decode" in text and "bit-exactly: yes" in text
    (row,) = json.loads(out.read_text())
    assert set(row["seconds"]) == {"encode", "decode", "latent_encode", "latent_decode"}
    assert all(set(v) == {"fixed8", "fixed", "float"} and min(v.values()) > 0 for v in row["seconds"].values())
    assert row["fixed_latents_exact"] and row["threads"] == 1 and row["clock"] == "cpu"


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["--models", "nope"]) == 2
    assert main(["--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "unknown model" in err and "--rounds must be >= 1" in err
