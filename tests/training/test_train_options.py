"""The job's command line is generated from TrainConfig and JobOptions: one source per option."""

import dataclasses

import pytest

from gnn_lic.cli import UsageError
from gnn_lic.training import TrainConfig
from gnn_lic.training.options import JobOptions, build_parser, convert, defaults, option_fields, train_config


def test_every_option_is_a_field_with_help():
    fields = option_fields()
    train = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    job = {f.name for f in dataclasses.fields(JobOptions)}
    assert set(fields) == train | job and not train & job
    assert {"lmbda", "run_dir"}.isdisjoint(fields)
    assert all(f.metadata["help"] for f in fields.values())
    flags = {a.dest for a in build_parser()._actions}
    assert set(fields) <= flags


def test_defaults_are_the_dataclass_defaults():
    d = defaults()
    cfg = TrainConfig()
    assert d["model"] is None  # a job must name its model
    for name in ("steps", "batch_size", "patch_size", "lr", "metric", "flips", "out", "threads"):
        assert d[name] == getattr(cfg, name)
    assert d["lambdas"] is None and d["anchors"] is True and d["shipped"] is True


def test_convert_reads_by_type_and_bounds():
    assert convert({"steps": "3", "lr": "1e-4", "flips": "off", "threads": ""}, "x") == {
        "steps": 3, "lr": 1e-4, "flips": False, "threads": None}
    assert convert({"plateau-patience": 0, "checkpoint": "a.pt"}, "x") == {"plateau_patience": 0,
                                                                              "checkpoint": ["a.pt"]}
    for bad in ({"steps": "0"}, {"steps": 2.5}, {"seed": True}, {"flips": "maybe"}):
        with pytest.raises(UsageError, match="bad value"):
            convert(bad, "x")
    with pytest.raises(UsageError, match="unknown option 'nope'"):
        convert({"nope": 1}, "x")


def test_train_config_takes_the_training_fields_only():
    opts = {**defaults(), "model": "glic", "lambdas": [0.1], "anchors": True}
    cfg = train_config(opts, lmbda=0.5, run_dir="r")
    assert cfg.lmbda == 0.5 and cfg.run_dir == "r" and cfg.model == "glic"
