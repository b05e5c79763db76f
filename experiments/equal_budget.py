"""Train several models for the same CPU time and compare them (the papers' ordering at equal budget).

    python experiments/equal_budget.py --cpu-hours 1 --models glic gabic wacnn cnn glic-local glic-global \\
        --data-train ../shared/data/wikiphotos --data-test ../shared/data/kodak \\
        --out runs/equal-budget --results experiments/results/equal-budget

Every model gets the same recipe (``experiments/run.py``'s defaults or the flags after
``--``), the same seed and data, and one variable-rate model over ``--lambdas``; only the
number of steps differs. The steps are sized in two phases:

1. *calibration*: each model trains ``--probe-steps`` steps (``--stop-after``, no evaluation) and the
   process CPU seconds of its steps after the first quarter (``log.csv``'s ``cpu_time``) give its
   CPU seconds per step;
2. *training*: ``steps = cpu_hours * 3600 / (CPU seconds per step)``, each model in its own
   ``run.py`` job, ``--parallel`` jobs at a time with ``--threads 1`` each (run the
   calibration with the same ``--parallel``, so its steps are timed under the same load).

``--variant NAME="FLAGS"`` (repeatable) compares training recipes instead of, or as well as,
models: every model trains once per variant, with the variant's ``run.py`` flags after the
common ones, for the same CPU time; the jobs are named ``MODEL@NAME``. Jobs that do the same
work per step (same model and :data:`WORK_OPTIONS`: a learning rate or schedule does not change
the step, a batch or crop size or the wavelet branch does) share one calibration, so timing
noise cannot hand equal-work recipes different step counts.

``OUT/plan.json`` records the steps and job folders; running the same command again skips
finished jobs and resumes unfinished ones (``run.py --resume``). At the end, the results
(``--results``) are: ``equal_budget.json`` (every curve, CompressAI format), ``table.md``
(BD-rate of each model against ``--anchor``, parameters, CPU seconds per step, steps and CPU
hours reached) and ``rd_psnr.png``, with the command that made them.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnn_lic.cli import ArgumentParser, UsageError, run_main  # noqa: E402
from gnn_lic.evaluation.bd import bd_table  # noqa: E402
from gnn_lic.evaluation.plot import plot_rd  # noqa: E402
from gnn_lic.evaluation.results import write_json  # noqa: E402

RUN = Path(__file__).resolve().parent / "run.py"
#: ``run.py`` options that change the work of a training step; jobs equal in these share a calibration
WORK_OPTIONS = ("size", "wavelet", "metric", "batch_size", "patch_size", "ortho_weight", "device", "threads",
                "deterministic")
PLAN = "plan.json"


def _job(folder: Path) -> Optional[Path]:
    """The job folder ``run.py`` made in ``folder`` (its only one), or None."""
    jobs = sorted(p for p in folder.glob("*") if (p / "config.yaml").is_file()) if folder.is_dir() else []
    if len(jobs) > 1:
        raise UsageError(f"'{folder}' holds {len(jobs)} jobs; expected one")
    return jobs[0] if jobs else None


def _log(job: Path) -> List[Dict[str, float]]:
    rows: List[Dict[str, float]] = []
    for log in sorted(job.glob("*/log.csv")):
        with open(log, newline="") as fh:
            rows += [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]
    return rows


def cpu_per_step(rows: Sequence[Dict[str, float]], skip: int = 2) -> float:
    """CPU seconds per step from ``log.csv`` rows (cumulative ``cpu_time``), leaving out the first ``skip`` steps."""
    rows = sorted(rows, key=lambda r: r["step"])
    if len(rows) <= skip:
        raise ValueError(f"need more than {skip} logged steps, got {len(rows)}")
    first, last = rows[skip - 1] if skip else {"step": 0.0, "cpu_time": 0.0}, rows[-1]
    return (last["cpu_time"] - first["cpu_time"]) / (last["step"] - first["step"])


def _run_jobs(commands: Sequence[Callable[[], Optional[List[str]]]], parallel: int) -> None:
    """Run ``commands``, ``parallel`` at a time; a failure stops the whole study.

    Each is a function that gives the argument list when its turn comes (None: nothing left to
    do), so a job that was started or finished meanwhile (by hand, by another study) is
    resumed or skipped, never started a second time.
    """
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < parallel:
            cmd = pending.pop(0)()
            if cmd is None:
                continue
            print("$", shlex.join(cmd), file=sys.stderr, flush=True)
            running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
        time.sleep(0.5)
        for item in list(running):
            code = item[1].poll()
            if code is not None:
                running.remove(item)
                if code != 0:
                    for _, proc in running:
                        proc.kill()
                    raise RuntimeError(f"exit status {code}: {shlex.join(item[0])}")


def parse_variants(specs: Sequence[str]) -> Dict[str, List[str]]:
    """``["lr5e-4=--lr 5e-4", "base="]`` -> ``{"lr5e-4": ["--lr", "5e-4"], "base": []}`` (names unique, folder-safe)."""
    variants: Dict[str, List[str]] = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UsageError(f"--variant {spec!r}: expected NAME=FLAGS with NAME of letters, digits, '.', '_', '-'")
        if name in variants:
            raise UsageError(f"--variant {name!r} is given twice")
        try:
            variants[name] = shlex.split(flags)
        except ValueError as err:
            raise UsageError(f"--variant {spec!r}: {err}") from None
    return variants


def job_specs(args) -> Dict[str, Dict[str, Any]]:
    """``{job key: {"model", "flags"}}``: one job per model, or per model and ``--variant``."""
    variants = parse_variants(args.variant)
    if not variants:
        return {m: {"model": m, "flags": []} for m in args.models}
    return {f"{m}@{v}": {"model": m, "flags": flags} for m in args.models for v, flags in variants.items()}


def _recipe(args) -> List[str]:
    common = ["--size", args.size, "--lambdas", *args.lambdas, "--variable-rate", "--seed", str(args.seed),
              "--threads", "1", "--no-progress", "--no-anchors", "--no-shipped"]
    for flag, value in (("--data-train", args.data_train), ("--data-test", args.data_test)):
        if value:
            common += [flag, value]
    return common + list(args.recipe)


def work_key(model: str, flags: Sequence[str]) -> str:
    """What a step of ``model`` trained with ``run.py`` ``flags`` costs: the model and the :data:`WORK_OPTIONS` set."""
    from gnn_lic.training.options import build_parser, convert

    given = convert(vars(build_parser().parse_args(["--model", model, *flags])), "flags")  # unset: absent
    return json.dumps([model] + [[k, given[k]] for k in WORK_OPTIONS if k in given])


def calibration_groups(specs: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """``{probe: [job keys]}``: the jobs of ``specs`` that do equal work, probed once (as the first of them)."""
    first: Dict[str, str] = {}
    groups: Dict[str, List[str]] = {}
    for key, spec in specs.items():
        probe = first.setdefault(work_key(spec["model"], spec["flags"]), key)
        groups.setdefault(probe, []).append(key)
    return groups


def calibrate(args, out: Path, specs: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``{job: {"cpu_s_per_step", "calibration"}}`` for each job of ``specs`` (:func:`job_specs`), from
    ``--probe-steps`` steps of its recipe: one probe per group of :func:`calibration_groups`, whose
    figure every job of the group gets, with the probe's key as its ``calibration``.
    """
    groups = calibration_groups(specs)
    folders = {key: out / "calibration" / key for key in groups}

    def probe(key: str) -> Optional[List[str]]:
        if _job(folders[key]) is not None:
            return None
        # a long nominal schedule stopped early: the probe neither evaluates nor counts as finished
        return [sys.executable, str(RUN), "--model", specs[key]["model"], *_recipe(args), *specs[key]["flags"],
                "--steps", str(1000 * args.probe_steps), "--stop-after", str(args.probe_steps),
                "--eval-every", "0", "--save-every", str(args.probe_steps), "--out", str(folders[key])]

    _run_jobs([functools.partial(probe, key) for key in groups], args.parallel)
    skip = max(2, args.probe_steps // 4)
    speed = {probe: cpu_per_step(_log(_job(f)), skip=skip) for probe, f in folders.items()}
    return {k: {"cpu_s_per_step": speed[probe], "calibration": probe} for probe, keys in groups.items() for k in keys}


def job_command(args, out: Path, key: str, item: Mapping[str, Any]) -> Optional[List[str]]:
    """What trains job ``key`` of the plan now: start it, resume it, or None when it has its results."""
    folder = out / "jobs" / key
    job = _job(folder)
    if job is None:
        return [sys.executable, str(RUN), "--model", item.get("model", key), *_recipe(args),
                *item.get("flags", []), "--steps", str(item["steps"]), "--out", str(folder)]
    if not (job / "results").is_dir():
        return [sys.executable, str(RUN), "--resume", str(job)]
    return None


def train_all(args, out: Path, plan: Dict[str, Any]) -> None:
    _run_jobs([functools.partial(job_command, args, out, key, item) for key, item in plan["models"].items()],
              args.parallel)


def pairwise_bd_rates(curves: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """``{test: {anchor: BD-rate % or None}}`` for every pair of curves (PSNR, pchip)."""
    out: Dict[str, Dict[str, Optional[float]]] = {name: {} for name in curves}
    for anchor in curves:
        for name, bd in bd_table(curves, anchor, metric="psnr-rgb").items():
            ok = not bd["error"] and math.isfinite(bd["bd_rate"])
            out[name][anchor] = float(bd["bd_rate"]) if ok else None
    return out


def summarise(args, out: Path, plan: Dict[str, Any], command: str) -> Dict[str, Any]:
    """Write ``equal_budget.json``, ``table.md`` and ``rd_psnr.png`` into ``--results``; returns the table rows."""
    from gnn_lic.evaluation.complexity import count_parameters  # noqa: PLC0415
    from gnn_lic.models.checkpoint import build_model, read_checkpoint  # noqa: PLC0415

    def curve_name(key: str) -> str:  # glic -> glic-small, glic@lr5e-4 -> glic-small@lr5e-4
        model, at, variant = key.partition("@")
        return f"{model}-{args.size}{at}{variant}"

    curves, rows = {}, {}
    for key, item in plan["models"].items():
        job = _job(out / "jobs" / key)
        model = item.get("model", key)
        name = curve_name(key)
        doc = json.loads((job / "results" / f"{model}-{args.size}.json").read_text())
        log = _log(job)
        curves[name] = doc
        config = read_checkpoint(next(job.glob("*/checkpoints/latest.pt")))["model_config"]
        net = build_model({k: v for k, v in config.items() if k != "rate_lambdas"})  # as built, without gain units
        points = sorted(zip(doc["results"]["bpp"], doc["results"]["psnr-rgb"]))
        rows[name] = {"parameters": count_parameters(net), "cpu_s_per_step": item["cpu_s_per_step"],
                      "steps": int(max(r["step"] for r in log)), "cpu_hours": max(r["cpu_time"] for r in log) / 3600,
                      "flags": item.get("flags", []), "lowest": points[0], "highest": points[-1]}
    anchor = curve_name(args.anchor or ("cnn" if not args.variant else next(iter(plan["models"]))))
    if anchor not in curves:
        raise UsageError(f"--anchor {args.anchor} is not among the jobs ({', '.join(plan['models'])})")
    for name, bd in bd_table(curves, anchor, metric="psnr-rgb").items():
        ok = not bd["error"] and math.isfinite(bd["bd_rate"])
        dq = bd["bd_quality"] if not bd["error"] and math.isfinite(bd["bd_quality"]) else None
        rows[name].update(bd_rate=bd["bd_rate"] if ok else None, bd_error=None if ok else bd["error"] or bd["note"],
                          bd_psnr=dq)
    pairs = pairwise_bd_rates(curves)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    write_json({"command": command, "cpu_hours": args.cpu_hours, "anchor": anchor, "table": rows,
                "pairwise_bd_rate": pairs, "curves": curves},
               res / "equal_budget.json")
    plot_rd(curves, metric="psnr-rgb", path=res / "rd_psnr.png",
            title=f"{args.cpu_hours:g} CPU hour(s) per model, {args.size} size")
    same = "same data and seed; the common recipe plus each variant's flags" if args.variant else \
        "same recipe, data and seed"
    lines = [f"Each {'job' if args.variant else 'model'} trained for {args.cpu_hours:g} CPU hour(s) ({same}; one "
             f"variable-rate model over lambdas {' '.join(args.lambdas)}); BD-rate (PSNR) against {anchor}, negative = "
             "fewer bits.",
             "", f"    {command}", "",
             "| model | BD-rate vs " + anchor + " | BD-PSNR [dB] | lowest / highest rate (bpp, dB) | parameters "
             "| CPU s / step | steps | CPU hours |" + (" flags |" if args.variant else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if args.variant else "")]
    order = sorted(rows, key=lambda n: (rows[n]["bd_psnr"] is None, -(rows[n]["bd_psnr"] or 0.0)))
    for name in order:
        r = rows[name]
        bd = "n/a (" + r["bd_error"] + ")" if r["bd_error"] else f"{r['bd_rate']:+.1f} %"
        dq = "n/a" if r["bd_psnr"] is None else f"{r['bd_psnr']:+.2f}"
        ends = " / ".join(f"{b:.3f}, {q:.2f}" for b, q in (r["lowest"], r["highest"]))
        flags = f" `{shlex.join(r['flags'])}` |" if args.variant else ""
        lines.append(f"| {name} | {bd} | {dq} | {ends} | {r['parameters']:,} | {r['cpu_s_per_step']:.2f} | "
                     f"{r['steps']} | {r['cpu_hours']:.2f} |{flags}")
    lines += ["", "BD-rate of each row against each column (PSNR, pchip; n/a: the curves share no quality range):",
              "", "| | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for name in order:
        cells = ["n/a" if pairs[name][a] is None else f"{pairs[name][a]:+.1f} %" for a in order]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (res / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = ArgumentParser(prog="equal_budget.py", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="registered model names")
    ap.add_argument("--cpu-hours", type=float, required=True, help="process CPU hours of training per model")
    ap.add_argument("--size", default="small", help="model size [default: small]")
    ap.add_argument("--lambdas", nargs="+", default=["mse"], help="rate points of each model [default: mse]")
    ap.add_argument("--anchor", help="the job the BD-rates are measured against: a model, or MODEL@VARIANT "
                    "[default: cnn, or the first job with --variant]")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="a training recipe: run.py flags added to the common ones; repeat to compare several "
                         "(each model trains once per variant)")
    ap.add_argument("--seed", type=int, default=0, help="the seed of every model [default: 0]")
    ap.add_argument("--data-train", help="training images (default: built-in)")
    ap.add_argument("--data-test", help="test images (default: built-in)")
    ap.add_argument("--probe-steps", type=int, default=24, help="calibration steps per model [default: 24]")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time, one thread each [default: 2]")
    ap.add_argument("--out", required=True, help="folder of the jobs and the plan")
    ap.add_argument("--results", required=True, help="folder of the table, curves and plot")
    ap.add_argument("recipe", nargs="*", help="further run.py flags for every model, after --")

    def body() -> int:
        args = ap.parse_args(argv)
        if args.cpu_hours <= 0 or args.probe_steps < 4 or args.parallel < 1:
            raise UsageError("--cpu-hours must be > 0, --probe-steps >= 4, --parallel >= 1")
        command = "python experiments/equal_budget.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plan_path = out / PLAN
        specs = job_specs(args)
        if plan_path.is_file():
            plan = json.loads(plan_path.read_text())
            same = sorted(plan["models"]) == sorted(specs) and all(
                plan["models"][k].get("flags", []) == spec["flags"] for k, spec in specs.items())
            if not same or plan["cpu_hours"] != args.cpu_hours:
                raise UsageError(f"'{plan_path}' plans other models, variants or hours; use another --out")
        else:
            plan = {"cpu_hours": args.cpu_hours, "models": {
                k: {**specs[k], **c, "steps": max(1, math.floor(args.cpu_hours * 3600 / c["cpu_s_per_step"]))}
                for k, c in calibrate(args, out, specs).items()}}
            write_json(plan, plan_path)
        for key, item in plan["models"].items():
            print(f"{key}: {item['cpu_s_per_step']:.3f} CPU s/step -> {item['steps']} steps", file=sys.stderr)
        train_all(args, out, plan)
        summarise(args, out, plan, command)
        return 0

    return run_main(body, "equal_budget.py", expected=(OSError, ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
