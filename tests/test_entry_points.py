"""Every entry point reports a usage or input error as one line and exit status 2 (gnn_lic.cli)."""

import pytest

from gnn_lic.bench.__main__ import main as bench_main
from gnn_lic.cli import ArgumentParser, UsageError, error_line, run_main
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


@pytest.mark.parametrize("main, argv, words", [
    (evaluation_main, ["anchors", "--data", "/no/such/folder", "--out", "o"], "does not exist"),
    (evaluation_main, ["bd", "--anchor", "/no/such.json", "--test", "x.json"], "No such file"),
    (evaluation_main, ["plot"], "required"),
    (evaluation_main, ["bd", "--anchor", "ref:nodataset", "--test", "x.json"], "bad reference spec"),
    (bench_main, ["codec", "--models", "no-such-model"], "unknown model"),
    (bench_main, ["graph", "--threads", "0"], "--threads"),
    (bench_main, ["nope"], "invalid choice"),
])
def test_entry_point_errors_exit_2_with_one_line(main, argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and words in err, err
