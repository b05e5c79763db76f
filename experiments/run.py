"""The main job: train one model per lambda, evaluate it with real bitstreams, report.

Usage::

    python experiments/run.py --model glic                      # the default job (~6 min on 2 idle CPU cores)
    python experiments/run.py --model gabic --lambdas mse --steps 20000 --size paper --device cuda
    python experiments/run.py --config experiments/configs/smoke.yaml --steps 10
    python experiments/run.py --config experiments/configs/gabic.yaml --device cuda   # GABIC's recipe
    python experiments/run.py --resume runs/glic-small-mse-20250101-120000   # continue a killed job
    python experiments/run.py --checkpoint a.pt b.pt --anchors               # evaluate only
    torchrun --nproc_per_node=2 experiments/run.py --model glic             # DDP (gloo on CPU, NCCL on GPU)

Precedence of options: built-in defaults < the resumed job's ``config.yaml`` <
``--config FILE.yaml`` (keys = option names, ``-`` or ``_``) < command-line flags.

For each lambda the job trains a model (:func:`gnn_lic.training.train`), then evaluates
its final weights on the test images with real bitstreams
(:func:`gnn_lic.evaluation.evaluate_model`; ``--entropy-estimation`` for the quick
estimate instead). The job folder holds::

    <out>/<model>-<size>-<metric>-<time>/
        config.yaml, env.json                 resolved job options, environment
        lambda-<value>/                        one training run folder per lambda (see gnn_lic.training.loop)
            results/eval.json                  the final evaluation of that lambda
        results/<model>-<size>.json            CompressAI-format results, one point per lambda
        results/rd_psnr.png, rd_ms-ssim-db.png RD plots (with the anchors when --anchors)
        results/anchors/<codec>.json           JPEG / WebP / AVIF measured on the same images (--anchors)

Bad arguments (unknown model, empty data folder, unreadable checkpoint, ...) print one
line ``run.py: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnn_lic.codec.errors import CheckpointError, ImageReadError  # noqa: E402
from gnn_lic.training.config import (  # noqa: E402
    DEFAULT_LAMBDAS,
    LAMBDA_PRESETS,
    LR_SCHEDULES,
    METRICS,
    ConfigError,
    TrainConfig,
    dump_yaml,
    load_yaml,
    parse_lambdas,
)
from gnn_lic.training.data import DataError  # noqa: E402

PROG = "run.py"
_D = TrainConfig()  # the defaults of the main job live in TrainConfig


def _pos_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(v)
    i = int(v) if not isinstance(v, float) or v.is_integer() else None
    if i is None or i < 1:
        raise ValueError(v)
    return i


def _nonneg_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(v)
    i = int(v)
    if i < 0 or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(v)
    return i


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(v)
    return float(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


def _str(v: Any) -> str:
    if v is None or isinstance(v, (dict, list)):
        raise ValueError(v)
    return str(v)


def _opt_str(v: Any) -> Optional[str]:
    return None if v in (None, "") else _str(v)


def _lambdas(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _paths(v: Any) -> List[str]:
    return [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


# name: (converter, default, flag kind, help); kinds: "value", "bool", "list", "optional"
OPTIONS: Dict[str, Tuple[Callable[[Any], Any], Any, str, str]] = {
    "model": (_str, None, "value", "registered model name (required unless --resume/--checkpoint)"),
    "size": (_str, _D.size, "value", "model size: tiny, small or paper"),
    "lambdas": (_lambdas, None, "list",
                "lambdas: numbers and/or presets 'mse' = %s, 'ms-ssim' = %s, 'gabic' = %s "
                "(default: mse %s / ms-ssim %s)"
                % (LAMBDA_PRESETS["mse"], LAMBDA_PRESETS["ms-ssim"], LAMBDA_PRESETS["gabic"], DEFAULT_LAMBDAS["mse"],
                   DEFAULT_LAMBDAS["ms-ssim"])),
    "metric": (_str, _D.metric, "value", "distortion: mse (255^2 MSE) or ms-ssim (1 - MS-SSIM)"),
    "steps": (_pos_int, _D.steps, "value", "optimizer steps per lambda"),
    "batch_size": (_pos_int, _D.batch_size, "value", "crops per step (per process)"),
    "patch_size": (_pos_int, _D.patch_size, "value", "training crop side in pixels"),
    "lr": (_float, _D.lr, "value", "learning rate of the main Adam"),
    "aux_lr": (_float, _D.aux_lr, "value", "learning rate of the aux Adam (quantiles)"),
    "lr_schedule": (_str, _D.lr_schedule, "value",
                    "step (x0.1 at --lr-drop of the steps), cosine, constant, or plateau (x --plateau-factor when "
                    "the evaluation loss has not improved for more than --plateau-patience evaluations)"),
    "lr_drop": (_float, _D.lr_drop, "value", "fraction of the steps after which 'step' divides the lr by 10"),
    "plateau_factor": (_float, _D.plateau_factor, "value", "learning-rate factor of 'plateau' (GABIC: 0.3)"),
    "plateau_patience": (_nonneg_int, _D.plateau_patience, "value",
                         "evaluations without improvement that 'plateau' tolerates (GABIC: 10 epochs)"),
    "clip_max_norm": (_float, _D.clip_max_norm, "value", "gradient-norm clipping (0: off)"),
    "ortho_weight": (_float, _D.ortho_weight, "value", "weight of the wavelet branch's orthogonality loss"),
    "flips": (_bool, _D.flips, "bool", "random flips of the training crops"),
    "data_train": (_opt_str, None, "value",
                   "folder of PNG/JPEG training images (default: built-in scikit-image photos)"),
    "data_test": (_opt_str, None, "value", "folder of PNG/JPEG test images (default: built-in chelsea, coffee)"),
    "out": (_str, _D.out, "value", "parent folder of the job folders"),
    "resume": (_opt_str, None, "optional", "continue the job in DIR (no DIR: the newest job in --out)"),
    "checkpoint": (_paths, None, "list", "evaluate these checkpoints only (no training)"),
    "device": (_str, _D.device, "value", "auto, cpu, cuda or cuda:N"),
    "seed": (_nonneg_int, _D.seed, "value", "random seed"),
    "threads": (_pos_int, None, "value", "torch threads per process (default: torch's / CPUs per process)"),
    "entropy_estimation": (_bool, False, "bool", "final evaluation by entropy estimation instead of bitstreams"),
    "anchors": (_bool, False, "bool", "also measure JPEG/WebP/AVIF on the test images and print BD-rates"),
    "eval_every": (_nonneg_int, _D.eval_every, "value", "steps between test evaluations (0: 4 per run)"),
    "save_every": (_nonneg_int, _D.save_every, "value", "steps between latest.pt saves (0: 4 per run)"),
    "log_every": (_pos_int, _D.log_every, "value", "steps between log.csv rows"),
    "stop_after": (_pos_int, None, "value", "stop after this step (as if preempted); --resume continues"),
    "deterministic": (_bool, _D.deterministic, "bool", "torch.use_deterministic_algorithms(True)"),
    "progress": (_bool, _D.progress, "bool", "tqdm progress bar"),
}
_PASSTHROUGH = ("steps", "batch_size", "patch_size", "lr", "aux_lr", "lr_schedule", "lr_drop", "plateau_factor",
                "plateau_patience", "clip_max_norm",
                "ortho_weight", "flips", "data_train", "data_test", "device", "seed", "threads", "eval_every",
                "save_every", "log_every", "stop_after", "deterministic", "progress", "model", "size", "metric")


#: options that describe one invocation, not the job: a resumed job does not inherit them
_PER_INVOCATION = ("resume", "checkpoint", "stop_after")


class UsageError(Exception):
    """A bad argument; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Train, evaluate and report gnn_lic models (one per lambda).",
                 argument_default=argparse.SUPPRESS, allow_abbrev=False)
    ap.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    for name, (_conv, default, kind, text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        shown = "" if default is None or kind == "bool" else f" [default: {default}]"
        if kind == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, help=text + (
                f" [default: {'on' if default else 'off'}]"))
        elif kind == "list":
            ap.add_argument(flag, nargs="+", metavar=name.upper()[:-1] if name.endswith("s") else "PATH",
                            help=text + shown)
        elif kind == "optional":
            ap.add_argument(flag, nargs="?", const="latest", metavar="DIR", help=text)
        else:
            metavar = ("DIR" if name in ("data_train", "data_test", "out") else
                       "N" if _conv in (_pos_int, _nonneg_int) else "X" if _conv is _float else name.upper())
            ap.add_argument(flag, metavar=metavar, help=text + shown)
    return ap


def _coerce(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    out = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k == "config":
            continue
        if k not in OPTIONS:
            raise UsageError(f"unknown option {key!r} in {source}")
        conv = OPTIONS[k][0]
        if value is None and OPTIONS[k][1] is None:
            out[k] = None
            continue
        try:
            out[k] = conv(value)
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


def resolve_options(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and merge defaults < resumed job config < ``--config`` < flags."""
    ns = vars(build_parser().parse_args(argv))
    cli = _coerce(ns, "the command line")
    from_file = _coerce(load_yaml(ns["config"]), f"'{ns['config']}'") if "config" in ns else {}
    opts = {k: v[1] for k, v in OPTIONS.items()}
    resume = cli.get("resume", from_file.get("resume"))
    if resume:
        job = _latest_job(cli.get("out", from_file.get("out", opts["out"]))) if resume == "latest" else Path(resume)
        if not (job / "config.yaml").is_file():
            raise UsageError(f"--resume: '{job}' is not a job folder (no config.yaml)")
        saved = _coerce({k: v for k, v in load_yaml(job / "config.yaml").items()
                         if k in OPTIONS and k not in _PER_INVOCATION}, f"'{job}'")
        opts.update(saved)
        opts["resume"] = str(job)
    opts.update(from_file)
    opts.update(cli)
    if resume:
        opts["resume"] = str(job)
    return opts


def _validate(opts: Dict[str, Any]) -> None:
    from gnn_lic.models import SIZES, list_models  # noqa: PLC0415

    if opts["checkpoint"]:
        return
    if not opts["model"]:
        raise UsageError("--model is required (or --resume DIR / --checkpoint CKPT)")
    if opts["model"] not in list_models():
        raise UsageError(f"unknown model {opts['model']!r}; choose one of: {', '.join(list_models())}")
    if opts["size"] not in SIZES:
        raise UsageError(f"unknown size {opts['size']!r}; choose one of: {', '.join(SIZES)}")
    if opts["metric"] not in METRICS:
        raise UsageError(f"unknown metric {opts['metric']!r}; choose one of: {', '.join(METRICS)}")
    if opts["lr_schedule"] not in LR_SCHEDULES:
        raise UsageError(f"unknown lr schedule {opts['lr_schedule']!r}; choose one of: {', '.join(LR_SCHEDULES)}")
    for key in ("data_train", "data_test"):
        if opts[key] and not Path(opts[key]).is_dir():
            raise UsageError(f"--{key.replace('_', '-')}: '{opts[key]}' is not a folder")


# ----------------------------------------------------------------------------- reporting


def format_table(rows: Sequence[Dict[str, Any]], mode: str, n_images: int) -> str:
    lines = [f"{'lambda':>10}  {'bpp':>8}  {'PSNR [dB]':>9}  {'MS-SSIM':>8}   ({mode}, {n_images} test image(s))"]
    for r in rows:
        lam = "-" if r.get("lambda") is None else f"{r['lambda']:g}"
        lines.append(f"{lam:>10}  {r['bpp']:>8.4f}  {r['psnr-rgb']:>9.3f}  {r['ms-ssim-rgb']:>8.5f}")
    return "\n".join(lines)


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=float)
        fh.write("\n")


def report(job_dir: Path, name: str, description: str, rows: List[Dict[str, Any]], test_images, anchors: bool,
           metric: str) -> Dict[str, Any]:
    """Write the results JSON and RD plots, measure anchors, print the tables; returns the results doc."""
    from gnn_lic.evaluation import bd_table, make_results, measure_anchors, plot_rd, save_results  # noqa: PLC0415
    from gnn_lic.evaluation.results import sort_results  # noqa: PLC0415

    results_dir = job_dir / "results"
    doc = make_results(
        name=name,
        description=description,
        bpp=[r["bpp"] for r in rows],
        psnr=[r["psnr-rgb"] for r in rows],
        ms_ssim=[r["ms-ssim-rgb"] for r in rows],
        per_image=[r["per_image"] for r in rows],
        **{"lambda": [r.get("lambda") for r in rows], "step": [r.get("step") for r in rows],
           "encoding_time": [r.get("encoding_time") for r in rows],
           "decoding_time": [r.get("decoding_time") for r in rows]},
    )
    doc = sort_results(doc)
    path = save_results(doc, results_dir / f"{name}.json")
    curves = {name: doc}
    if anchors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = measure_anchors(test_images)
        for codec, adoc in measured.items():
            save_results(adoc, results_dir / "anchors" / f"{codec}.json")
            curves[codec] = adoc
    plots = []
    for m in ("psnr-rgb", "ms-ssim-db"):
        plots.append(plot_rd(curves, metric=m, path=results_dir / f"rd_{m.replace('-rgb', '')}.png",
                             title=f"{name} on {len(test_images)} test image(s)", highlight=[name]))
    print(format_table(rows, rows[0]["mode"], len(test_images)))
    if anchors and len(curves) > 1:
        main_metric = "psnr-rgb" if metric == "mse" else "ms-ssim-db"
        print(f"BD-rate of {name} vs the anchors ({main_metric}; negative = fewer bits):")
        for codec in curves:
            if codec == name:
                continue
            row = bd_table({codec: curves[codec], name: doc}, codec, metric=main_metric)[name]
            if row["error"]:
                print(f"  vs {codec:<5} n/a ({row['error']})")
            else:
                print(f"  vs {codec:<5} BD-rate {row['bd_rate']:+8.2f} %   BD-quality {row['bd_quality']:+.3f}")
    print(f"results: {path}")
    print(f"RD plots: {', '.join(str(p) for p in plots)}")
    return doc


def _evaluate(net, images, entropy_estimation: bool) -> Dict[str, Any]:
    from gnn_lic.evaluation import SmallImageWarning, evaluate_model  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallImageWarning)
        return evaluate_model(net, images, entropy_estimation=entropy_estimation)


def _new_job_dir(out: str, stem: str) -> Path:
    base = Path(out) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    job, i = base, 2
    while job.exists():
        job = base.with_name(f"{base.name}-{i}")
        i += 1
    job.mkdir(parents=True)
    return job


# ----------------------------------------------------------------------------- modes


def evaluate_only(opts: Dict[str, Any], ctx) -> int:
    """``--checkpoint CKPT ...``: evaluate saved models, one rate point each."""
    from gnn_lic.models.checkpoint import load_checkpoint  # noqa: PLC0415
    from gnn_lic.training.data import load_images  # noqa: PLC0415

    if not ctx.is_main:
        return 0
    test_images = load_images(opts["data_test"], "test")
    nets = []
    for path in opts["checkpoint"]:
        net, ckpt = load_checkpoint(path, map_location=ctx.device)
        nets.append((path, net, ckpt))
    names = {f"{n.model_name}-{n.model_size}" for _, n, _ in nets}
    name = names.pop() if len(names) == 1 else "models"
    job = _new_job_dir(opts["out"], f"eval-{name}")
    dump_yaml({k: opts[k] for k in OPTIONS}, job / "config.yaml")
    from gnn_lic.training.loop import environment_info  # noqa: PLC0415

    _write_json(environment_info(ctx, opts["seed"]), job / "env.json")
    rows = []
    for path, net, ckpt in nets:
        res = _evaluate(net, test_images, opts["entropy_estimation"])
        cfg = ckpt.get("config") or {}
        res.update({"lambda": cfg.get("lmbda"), "step": ckpt.get("step"), "checkpoint": str(path)})
        rows.append(res)
    rows.sort(key=lambda r: r["bpp"])
    report(job, name, f"{name}: {len(rows)} checkpoint(s) evaluated by experiments/run.py", rows, test_images,
           opts["anchors"], opts["metric"])
    print(f"run folder: {job}")
    return 0


def train_job(opts: Dict[str, Any], ctx) -> int:
    """Train and evaluate one model per lambda."""
    from gnn_lic.models.checkpoint import load_checkpoint  # noqa: PLC0415
    from gnn_lic.training.distributed import barrier, broadcast_object  # noqa: PLC0415
    from gnn_lic.training.data import load_images  # noqa: PLC0415
    from gnn_lic.training.loop import LATEST, environment_info, train  # noqa: PLC0415

    lambdas = parse_lambdas(opts["lambdas"], opts["metric"])
    stem = f"{opts['model']}-{opts['size']}-{opts['metric']}"
    if opts["resume"]:
        job = Path(opts["resume"])
    else:
        job = broadcast_object(_new_job_dir(opts["out"], stem) if ctx.is_main else None)
    test_images = load_images(opts["data_test"], "test")  # fail early on a bad folder
    if opts["data_train"]:
        load_images(opts["data_train"], "train")
    if ctx.is_main:
        resolved = {k: opts[k] for k in OPTIONS}
        resolved["lambdas"] = lambdas
        dump_yaml(resolved, job / "config.yaml")
        env = environment_info(ctx, opts["seed"])
        env["resumed"] = bool(opts["resume"])
        _write_json(env, job / "env.json")
        print(f"job folder: {job}  ({len(lambdas)} lambda(s): {', '.join(f'{x:g}' for x in lambdas)})",
              file=sys.stderr)
    barrier()

    rows: List[Dict[str, Any]] = []
    for lmbda in lambdas:
        run_dir = job / f"lambda-{lmbda:g}"
        cfg = TrainConfig(**{k: opts[k] for k in _PASSTHROUGH}, lmbda=lmbda, out=str(job), run_dir=str(run_dir),
                          resume=bool(opts["resume"]) and (run_dir / LATEST).exists())
        train(cfg)
        if not ctx.is_main:
            continue
        net, ckpt = load_checkpoint(run_dir / LATEST, map_location=ctx.device)
        if int(ckpt["step"]) < cfg.steps:
            print(f"job stopped at lambda {lmbda:g}, step {ckpt['step']} of {cfg.steps}; continue with: "
                  f"python experiments/run.py --resume {job}")
            print(f"run folder: {job}")
            return 0
        res = _evaluate(net, test_images, opts["entropy_estimation"])
        res.update({"lambda": lmbda, "step": int(ckpt["step"]), "checkpoint": str(run_dir / LATEST)})
        _write_json(res, run_dir / "results" / "eval.json")
        rows.append(res)
        print(f"lambda {lmbda:g}: bpp {res['bpp']:.4f}  PSNR {res['psnr-rgb']:.3f} dB  "
              f"MS-SSIM {res['ms-ssim-rgb']:.5f}  ({res['mode']})", file=sys.stderr)
        del net
    if not ctx.is_main:
        return 0
    name = f"{opts['model']}-{opts['size']}"
    source = opts["data_test"] or "built-in scikit-image test images"
    desc = (f"{name} ({opts['metric']}) trained {opts['steps']} steps x {opts['batch_size']} crops of "
            f"{opts['patch_size']} px per lambda by experiments/run.py; evaluated on {source}")
    report(job, name, desc, rows, test_images, opts["anchors"], opts["metric"])
    print(f"run folder: {job}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments)."""
    from gnn_lic.utils import tune_malloc  # noqa: PLC0415

    tune_malloc()
    ctx = None
    try:
        opts = resolve_options(argv)
        _validate(opts)
        from gnn_lic.training.distributed import init_distributed  # noqa: PLC0415

        if opts["threads"]:
            import torch  # noqa: PLC0415

            torch.set_num_threads(opts["threads"])
        try:
            ctx = init_distributed(opts["device"])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if opts["checkpoint"]:
            return evaluate_only(opts, ctx)
        return train_job(opts, ctx)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, ConfigError, DataError, CheckpointError, ImageReadError) as exc:
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None and ctx.distributed:
            from gnn_lic.training.distributed import barrier, cleanup  # noqa: PLC0415

            try:
                barrier()
            finally:
                cleanup()


if __name__ == "__main__":
    sys.exit(main())
