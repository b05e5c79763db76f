"""The main job: train, evaluate with real bitstreams, report.

:func:`main` is ``experiments/run.py``. With two or more lambdas the job trains one
variable-rate model serving all of them (``--no-variable-rate``: one model per lambda);
with one lambda, one single-rate model (:func:`gnn_lic.training.train`). It then evaluates
the final weights on the test images with real bitstreams
(:func:`gnn_lic.evaluation.evaluate_model`; ``--entropy-estimation`` for the quick estimate
instead) and reports (:func:`gnn_lic.evaluation.report.report`). The job
folder holds::

    <out>/<model>-<size>-<metric>-<time>/
        config.yaml, env.json                 resolved job options, environment
        variable-rate/                         the training run folder of a variable-rate model
            results/eval-q<quality>.json       (see gnn_lic.training.loop); its evaluation per quality
        lambda-<value>/                        or one training run folder per lambda
            results/eval.json                  and the final evaluation of that lambda
        results/...                            see gnn_lic.evaluation.report

``--checkpoint CKPT ...`` evaluates saved models instead (:func:`evaluate_only`).
Bad arguments print one line ``run.py: error: ...`` and exit with status 2 (:mod:`gnn_lic.cli`).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from gnn_lic.cli import UsageError, run_main
from gnn_lic.errors import CheckpointError, ImageReadError
from gnn_lic.evaluation import SmallImageWarning, evaluate_model
from gnn_lic.evaluation.images import DataError, load_images
from gnn_lic.evaluation.report import report, shipped_curve
from gnn_lic.evaluation.results import write_json
from gnn_lic.models.checkpoint import load_checkpoint
from gnn_lic.training.config import ConfigError, dump_yaml, parse_lambdas
from gnn_lic.training.distributed import barrier, broadcast_object, cleanup, init_distributed
from gnn_lic.training.loop import LATEST, train
from gnn_lic.training.options import defaults, resolve_options, train_config, validate_options
from gnn_lic.training.runinfo import environment_info

__all__ = ["main", "train_job", "evaluate_only", "new_job_dir"]

#: errors a user can cause with an argument or an input file: one line, exit status 2
EXPECTED_ERRORS = (ConfigError, DataError, CheckpointError, ImageReadError)


def _evaluate(net, images, entropy_estimation: bool, quality: Optional[int] = None) -> Dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallImageWarning)
        return evaluate_model(net, images, entropy_estimation=entropy_estimation, quality=quality)


def new_job_dir(out: str, stem: str) -> Path:
    """A fresh ``<out>/<stem>-<time>`` folder (``-2``, ``-3``, ... when taken)."""
    base = Path(out) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    job, i = base, 2
    while job.exists():
        job = base.with_name(f"{base.name}-{i}")
        i += 1
    job.mkdir(parents=True)
    return job


def _write_job_files(job: Path, opts: Dict[str, Any], ctx, **resolved: Any) -> None:
    dump_yaml({**{k: opts[k] for k in defaults()}, **resolved}, job / "config.yaml")
    env = environment_info(ctx, opts["seed"])
    if "lambdas" in resolved:
        env["resumed"] = bool(opts["resume"])
    write_json(env, job / "env.json")


def evaluate_only(opts: Dict[str, Any], ctx) -> int:
    """``--checkpoint CKPT ...``: evaluate saved models, one rate point each."""
    if not ctx.is_main:
        return 0
    test_images = load_images(opts["data_test"], "test")
    nets = [(path, *load_checkpoint(path, map_location=ctx.device)) for path in opts["checkpoint"]]
    names = {f"{n.model_name}-{n.model_size}" for _, n, _ in nets}
    name = names.pop() if len(names) == 1 else "models"
    job = new_job_dir(opts["out"], f"eval-{name}")
    _write_job_files(job, opts, ctx)
    rows = []
    for path, net, ckpt in nets:
        cfg = ckpt.get("config") or {}
        rate = cfg.get("rate_lambdas") or getattr(getattr(net, "gain", None), "lambdas", None)
        points = [(i + 1, lam) for i, lam in enumerate(rate)] if rate else [(None, cfg.get("lmbda"))]
        for quality, lmbda in points:  # every quality of a variable-rate model
            res = _evaluate(net, test_images, opts["entropy_estimation"], quality)
            res.update({"lambda": lmbda, "step": ckpt.get("step"), "checkpoint": str(path)})
            if quality is not None:
                res["quality"] = quality
            rows.append(res)
    rows.sort(key=lambda r: r["bpp"])
    report(job, name, f"{name}: {len(rows)} checkpoint(s) evaluated by experiments/run.py", rows, test_images,
           opts["anchors"], opts["metric"])
    print(f"run folder: {job}")
    return 0


def _train_one(opts: Dict[str, Any], ctx, job: Path, lambdas: List[float], test_images
               ) -> Optional[List[Dict[str, Any]]]:
    """Train and evaluate one model: for one lambda, or variable-rate over ``lambdas``.

    Returns one evaluation row per rate point (each quality of a variable-rate model);
    None when the run stopped early (or on a non-main process).
    """
    if len(lambdas) == 1:
        run_dir = job / f"lambda-{lambdas[0]:g}"
        fields: Dict[str, Any] = {"lmbda": lambdas[0]}
        points = [(None, lambdas[0])]
    else:
        run_dir = job / "variable-rate"
        fields = {"lmbda": lambdas[-1], "rate_lambdas": list(lambdas)}
        points = [(i + 1, lam) for i, lam in enumerate(lambdas)]
    cfg = train_config(opts, out=str(job), run_dir=str(run_dir),
                       resume=bool(opts["resume"]) and (run_dir / LATEST).exists(), **fields)
    train(cfg)
    if not ctx.is_main:
        return None
    net, ckpt = load_checkpoint(run_dir / LATEST, map_location=ctx.device)
    if int(ckpt["step"]) < cfg.steps:
        print(f"job stopped at {run_dir.name}, step {ckpt['step']} of {cfg.steps}; continue with: "
              f"python experiments/run.py --resume {job}")
        return None
    rows = []
    for quality, lmbda in points:
        res = _evaluate(net, test_images, opts["entropy_estimation"], quality)
        res.update({"lambda": lmbda, "step": int(ckpt["step"]), "checkpoint": str(run_dir / LATEST)})
        name = "eval.json"
        if quality is not None:
            res["quality"] = quality
            name = f"eval-q{quality}.json"
        write_json(res, run_dir / "results" / name)
        print(f"lambda {lmbda:g}{'' if quality is None else f' (quality {quality})'}: bpp {res['bpp']:.4f}  "
              f"PSNR {res['psnr-rgb']:.3f} dB  MS-SSIM {res['ms-ssim-rgb']:.5f}  ({res['mode']})", file=sys.stderr)
        rows.append(res)
    return rows


def train_job(opts: Dict[str, Any], ctx) -> int:
    """Train and evaluate one model per lambda (or one variable-rate model), then report."""
    lambdas = parse_lambdas(opts["lambdas"], opts["metric"])
    variable = len(lambdas) > 1 if opts["variable_rate"] is None else opts["variable_rate"]
    if variable and len(lambdas) < 2:
        raise ConfigError("--variable-rate needs at least two lambdas")
    if opts["resume"]:
        job = Path(opts["resume"])
    else:
        stem = f"{opts['model']}-{opts['size']}-{opts['metric']}"
        job = broadcast_object(new_job_dir(opts["out"], stem) if ctx.is_main else None)
    test_images = load_images(opts["data_test"], "test")  # fail early on a bad folder
    if opts["data_train"]:
        load_images(opts["data_train"], "train")
    if ctx.is_main:
        _write_job_files(job, opts, ctx, lambdas=lambdas)
        kind = "one variable-rate model over " if variable else ""
        print(f"job folder: {job}  ({kind}{len(lambdas)} lambda(s): {', '.join(f'{x:g}' for x in lambdas)})",
              file=sys.stderr)
    barrier()
    rows: List[Dict[str, Any]] = []
    for group in ([sorted(lambdas)] if variable else [[x] for x in lambdas]):
        res = _train_one(opts, ctx, job, group, test_images)
        if res is None and ctx.is_main:
            print(f"run folder: {job}")
            return 0
        rows.extend(res or [])
    if not ctx.is_main:
        return 0
    name = f"{opts['model']}-{opts['size']}"
    source = opts["data_test"] or "built-in scikit-image test images"
    per = "for one variable-rate model" if variable else "per lambda"
    desc = (f"{name} ({opts['metric']}) trained {opts['steps']} steps x {opts['batch_size']} crops of "
            f"{opts['patch_size']} px {per} by experiments/run.py; evaluated on {source}")
    compare = []
    if opts["shipped"]:
        shipped = shipped_curve(opts["model"], opts["size"], test_images, opts["entropy_estimation"])
        compare = [shipped] if shipped is not None else []
    report(job, name, desc, rows, test_images, opts["anchors"], opts["metric"], compare=compare)
    print(f"run folder: {job}")
    return 0


def _run(argv: Optional[Sequence[str]], prog: str, held: List[Any]) -> int:
    opts = resolve_options(argv, prog)
    validate_options(opts)
    if opts["threads"]:
        import torch  # noqa: PLC0415

        torch.set_num_threads(opts["threads"])
    try:
        held.append(init_distributed(opts["device"]))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return evaluate_only(opts, held[0]) if opts["checkpoint"] else train_job(opts, held[0])


def main(argv: Optional[Sequence[str]] = None, prog: str = "run.py") -> int:
    """Run a job from command-line arguments; returns the exit status (2 for bad arguments)."""
    from gnn_lic.utils import tune_malloc  # noqa: PLC0415

    tune_malloc()
    held: List[Any] = []  # the distributed context, once made
    try:
        return run_main(lambda: _run(argv, prog, held), prog, expected=EXPECTED_ERRORS)
    finally:
        if held and held[0].distributed:
            try:
                barrier()
            finally:
                cleanup()
