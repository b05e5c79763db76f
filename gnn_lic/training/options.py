"""The job's options, generated from the dataclass fields that define them.

The training options are the fields of :class:`~gnn_lic.training.config.TrainConfig`
(those set per lambda by the job -- ``lmbda``, ``run_dir``, ``resume`` -- excepted); the
options of the job itself are the fields of :class:`JobOptions`. Each field's metadata
gives its help text, bounds and choices; :func:`build_parser` turns them into argparse
flags, :func:`convert` reads a value of either source (flag string or YAML value) by the
field's type, and :meth:`TrainConfig.validate` checks ranges and choices. Nothing here
lists an option by name.

Precedence: built-in defaults < the resumed job's ``config.yaml`` < ``--config FILE.yaml``
(keys = option names, ``-`` or ``_``) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from gnn_lic.cli import ArgumentParser, UsageError
from gnn_lic.training.config import DEFAULT_LAMBDAS, LAMBDA_PRESETS, TrainConfig, _option, load_yaml

__all__ = ["JobOptions", "option_fields", "defaults", "build_parser", "convert", "resolve_options",
           "validate_options", "train_config", "PER_INVOCATION"]

_LAMBDA_HELP = ("lambdas: numbers and/or presets 'mse' = %s, 'ms-ssim' = %s, 'gabic' = %s (default: mse %s / "
                "ms-ssim %s)" % (LAMBDA_PRESETS["mse"], LAMBDA_PRESETS["ms-ssim"], LAMBDA_PRESETS["gabic"],
                                 DEFAULT_LAMBDAS["mse"], DEFAULT_LAMBDAS["ms-ssim"]))


@dataclass
class JobOptions:
    """The options of a job that are not options of one rate point's training."""

    lambdas: Optional[List[Any]] = _option(None, _LAMBDA_HELP, metavar="LAMBDA")
    resume: Optional[str] = _option(None, "continue the job in DIR (no DIR: the newest job in --out)",
                                    metavar="DIR", per_invocation=True)
    checkpoint: Optional[List[str]] = _option(None, "evaluate these checkpoints only (no training)", metavar="PATH",
                                              per_invocation=True)
    entropy_estimation: bool = _option(False, "final evaluation by entropy estimation instead of bitstreams")
    anchors: bool = _option(True, "also measure JPEG/WebP/AVIF on the test images and print BD-rates")
    shipped: bool = _option(True, "also evaluate the shipped weights of the same model and size on the test images")


def option_fields() -> Dict[str, dataclasses.Field]:
    """``{option name: field}``: TrainConfig's command-line fields, then JobOptions'."""
    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    return {f.name: f for f in fields + list(dataclasses.fields(JobOptions))}


#: options that describe one invocation, not the job: a resumed job does not inherit them
PER_INVOCATION = tuple(n for n, f in option_fields().items() if f.metadata.get("per_invocation")) + ("stop_after",)


def defaults() -> Dict[str, Any]:
    return {n: f.metadata.get("job_default", f.default) for n, f in option_fields().items()}


def _is_list(f: dataclasses.Field) -> bool:
    return str(f.type).startswith("Optional[List")


def build_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    ap = ArgumentParser(prog=prog, description="Train, evaluate and report gnn_lic models.",
                        argument_default=argparse.SUPPRESS, allow_abbrev=False)
    ap.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    for name, default in defaults().items():
        f = option_fields()[name]
        flag, text = "--" + name.replace("_", "-"), f.metadata["help"]
        if f.type in ("bool", "Optional[bool]"):
            shown = "" if default is None else f" [default: {'on' if default else 'off'}]"
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, help=text + shown)
            continue
        shown = "" if default is None else f" [default: {default}]"
        metavar = f.metadata.get("metavar") or {"int": "N", "Optional[int]": "N", "float": "X"}.get(
            str(f.type), name.upper())
        if _is_list(f):
            ap.add_argument(flag, nargs="+", metavar=metavar, help=text + shown)
        elif name == "resume":
            ap.add_argument(flag, nargs="?", const="latest", metavar=metavar, help=text)
        else:
            ap.add_argument(flag, metavar=metavar, help=text + shown)
    return ap


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


def _to_int(v: Any, lo: Optional[int]) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(v)
    i = int(v)
    if lo is not None and i < lo:
        raise ValueError(v)
    return i


def _read(f: dataclasses.Field, v: Any) -> Any:
    kind = str(f.type).replace("Optional[", "").rstrip("]")
    if v in (None, "") and str(f.type).startswith("Optional"):
        return None
    if isinstance(v, bool) and kind != "bool":
        raise ValueError(v)
    if kind == "bool":
        return _to_bool(v)
    if kind == "int":
        return _to_int(v, f.metadata.get("min"))
    if kind == "float":
        return float(v)
    if kind.startswith("List"):
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        return [str(x) for x in items] if kind == "List[str" else items
    if v is None or isinstance(v, (dict, list)):
        raise ValueError(v)
    return str(v)


def convert(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Option values of ``source`` (flags or a YAML mapping) read by their fields' types."""
    fields = option_fields()
    out = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k == "config":
            continue
        if k not in fields:
            raise UsageError(f"unknown option {key!r} in {source}")
        try:
            out[k] = _read(fields[k], value)
        except (TypeError, ValueError):
            raise UsageError(f"bad value {value!r} for {k.replace('_', '-')} in {source}") from None
    return out


def _latest_job(out: str) -> Path:
    root = Path(out)
    # training jobs only: evaluation folders (eval-*) have nothing to resume
    jobs = [p for p in root.glob("*") if (p / "config.yaml").is_file() and not p.name.startswith("eval-")] \
        if root.is_dir() else []
    if not jobs:
        raise UsageError(f"--resume: no job folder in '{root}'")
    return max(jobs, key=lambda p: p.stat().st_mtime)


def resolve_options(argv: Optional[Sequence[str]] = None, prog: str = "run.py") -> Dict[str, Any]:
    """Parse ``argv`` and merge defaults < resumed job config < ``--config`` < flags."""
    ns = vars(build_parser(prog).parse_args(argv))
    cli = convert(ns, "the command line")
    from_file = convert(load_yaml(ns["config"]), f"'{ns['config']}'") if "config" in ns else {}
    opts = defaults()
    resume = cli.get("resume", from_file.get("resume"))
    if resume:
        job = _latest_job(cli.get("out", from_file.get("out", opts["out"]))) if resume == "latest" else Path(resume)
        if not (job / "config.yaml").is_file():
            raise UsageError(f"--resume: '{job}' is not a job folder (no config.yaml)")
        saved = convert({k: v for k, v in load_yaml(job / "config.yaml").items()
                         if k in opts and k not in PER_INVOCATION}, f"'{job}'")
        opts.update(saved)
    opts.update(from_file)
    opts.update(cli)
    if resume:
        opts["resume"] = str(job)
    return opts


def train_config(opts: Dict[str, Any], **fields: Any) -> TrainConfig:
    """The :class:`TrainConfig` of ``opts`` (its own fields only), with ``fields`` set; validated."""
    own = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    cfg = TrainConfig(**{k: v for k, v in opts.items() if k in own and k not in fields}, **fields)
    cfg.validate()
    return cfg


def validate_options(opts: Dict[str, Any]) -> None:
    """Check what a job needs before it starts: a model, valid training options (TrainConfig.validate), folders."""
    if opts["checkpoint"]:
        return
    if not opts["model"]:
        raise UsageError("--model is required (or --resume DIR / --checkpoint CKPT)")
    train_config(opts)
    for key in ("data_train", "data_test"):
        if opts[key] and not Path(opts[key]).is_dir():
            raise UsageError(f"--{key.replace('_', '-')}: '{opts[key]}' is not a folder")
