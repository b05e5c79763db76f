"""Every entry point reports a usage or input error as one line and exit status 2 (gnn_lic.cli):
``python -m gnn_lic``, ``python -m gnn_lic.evaluation``, ``python -m gnn_lic.bench``,
``experiments/run.py`` and ``experiments/ship_weights.py``."""

import subprocess
import sys

import pytest

from gnn_lic.__main__ import main as gnn_lic_main
from gnn_lic.bench.__main__ import main as bench_main
from gnn_lic.cli import EXIT_BROKEN_PIPE, ArgumentParser, UsageError, error_line, run_main
from gnn_lic.evaluation.__main__ import main as evaluation_main


def test_error_line_is_one_line():
    assert error_line("a\n  b", "prog") == "prog: error: a b"
    assert error_line("x") == "error: x"


def test_parser_errors_raise_usage_error():
    p = ArgumentParser(prog="p")
    p.add_argument("--n", type=int)
    with pytest.raises(UsageError, match=r"invalid int value.*\(see p --help\)"):
        p.parse_args(["--n", "x"])


def test_run_main_maps_expected_errors_to_2(capsys):
    def bad():
        raise KeyError("k")

    assert run_main(bad, "p", expected=(KeyError,)) == 2
    assert capsys.readouterr().err == "p: error: 'k'\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected error
        run_main(lambda: 1 / 0, "p")


def test_run_main_ends_quietly_when_the_reader_goes_away(capsys):
    def cut():
        raise BrokenPipeError(32, "Broken pipe")

    for expected in ((), (OSError,)):  # an entry point expecting OSError (a BrokenPipeError's base) too
        assert run_main(cut, "p", expected=expected) == EXIT_BROKEN_PIPE
        assert capsys.readouterr().err == ""


@pytest.fixture
def entry_point(experiment_script):
    """``entry_point(name)``: the ``main(argv)`` of an entry point."""
    mains = {"gnn_lic": gnn_lic_main, "evaluation": evaluation_main, "bench": bench_main}

    def get(name):
        return mains[name] if name in mains else experiment_script(name).main

    return get


@pytest.mark.parametrize("name, argv, words", [
    ("gnn_lic", ["compress", "/no/such.png", "o.glic", "--model", "glic"], "does not exist"),
    ("gnn_lic", ["info", "/no/such.glic"], "does not exist"),
    ("gnn_lic", ["compress", "a.png"], "required"),
    ("gnn_lic", ["frobnicate"], "invalid choice"),
    ("evaluation", ["anchors", "--data", "/no/such/folder", "--out", "o"], "does not exist"),
    ("evaluation", ["bd", "--anchor", "/no/such.json", "--test", "x.json"], "No such file"),
    ("evaluation", ["plot"], "required"),
    ("evaluation", ["bd", "--anchor", "ref:nodataset", "--test", "x.json"], "bad reference spec"),
    ("bench", ["codec", "--models", "no-such-model"], "unknown model"),
    ("bench", ["graph", "--threads", "0"], "--threads"),
    ("bench", ["nope"], "invalid choice"),
    ("run", ["--model", "no-such-model"], "unknown model"),
    ("run", ["--model", "glic", "--data-test", "/no/such/folder"], "not a folder"),
    ("run", ["--model", "glic", "--steps", "many"], "bad value"),
    ("ship_weights", ["/no/such.pt", "--command", "c", "--data", "d"], "does not exist"),
    ("ship_weights", [], "CHECKPOINT"),
])
def test_entry_point_errors_exit_2_with_one_line(entry_point, name, argv, words, capsys):
    assert entry_point(name)(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and words in err, err


def test_importing_the_package_prints_no_third_party_deprecation():
    """torch_geometric's import-time ``torch.jit.script`` deprecation is not shown to our users."""
    r = subprocess.run([sys.executable, "-c", "import gnn_lic.models"], capture_output=True, text=True, check=True)
    assert "torch.jit.script" not in r.stderr, r.stderr
