"""The training loop: ``train(config) -> run_dir``.

One call trains one rate point (one lambda), or one variable-rate model over several, for
``config.steps`` optimizer steps and leaves a run folder::

    <run_dir>/
        config.yaml            resolved TrainConfig
        env.json               versions, threads, device, world size, seed, git commit
        log.csv                one row per step: loss terms, grad norm, lr, wall and CPU time, skipped steps
        eval.csv               periodic evaluations on the test images (entropy-estimation bpp, PSNR)
        checkpoints/latest.pt  model + both optimizers and schedulers + step + RNG state (every K steps, at the end)
        checkpoints/best.pt    model with the lowest evaluation loss so far
        results/               final evaluations (written by experiments/run.py)

**Reproducibility.** The model is initialised after ``torch.manual_seed(seed)``; at each
step ``s`` the crops come from a generator seeded with ``(seed, s)`` and the global RNG
(quantisation noise) is reseeded with ``(seed, s, rank)``. Nothing random therefore
carries over from one step to the next except what ``latest.pt`` stores (weights,
optimizer moments, scheduler, step counter), which is why ``resume=True`` reproduces an
uninterrupted run step for step. ``latest.pt`` also stores the RNG states (as tensors)
for completeness; every checkpoint loads with ``torch.load(weights_only=True)``.

**Non-finite steps.** When the loss (on any process) or the gradient norm is not
finite, neither optimizer is stepped; the step is counted in the ``skipped`` column
of ``log.csv`` and the learning-rate schedule still advances.

**Learning rate.** ``step``/``cosine``/``constant`` schedules advance once per step, for
both optimizers. ``plateau`` (GABIC's recipe) steps ``ReduceLROnPlateau`` on the
evaluation loss of each periodic evaluation (:meth:`Trainer.step_plateau`, before
``latest.pt`` is written); the aux rate stays constant.

**Distributed.** Under ``torchrun`` the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (``quantiles`` excluded: each
process fits them with its own aux loss, which depends on no data, so they stay
equal); rank 0 alone evaluates and writes files.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from gnn_lic.evaluation.images import load_images
from gnn_lic.evaluation.results import write_json
from gnn_lic.models.checkpoint import build_model, load_state_into, read_checkpoint, save_checkpoint
from gnn_lic.training.config import ConfigError, TrainConfig, dump_yaml
from gnn_lic.training.data import RandomCrops, step_seed
from gnn_lic.training.distributed import wrap_ddp, all_reduce_sum, barrier, broadcast_object, init_distributed
from gnn_lic.training.losses import RateDistortionLoss, eval_loss, has_ortho_loss
from gnn_lic.training.rates import evaluate_rates, init_weights, rate_label, rate_points, run_model, sample_rates
from gnn_lic.training.runinfo import CSVLog, environment_info, lock_run_dir, rng_state, set_rng_state, truncate_csv
from gnn_lic.training.optim import (PER_STEP_SCHEDULES, configure_optimizers, extend_schedule, grad_norm_and_clip,
                                   make_scheduler, split_parameters)

__all__ = ["Trainer", "train", "environment_info", "eval_loss", "default_run_dir", "LATEST", "BEST"]

LATEST = "checkpoints/latest.pt"
BEST = "checkpoints/best.pt"


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out) / f"{cfg.model}-{cfg.size}-{cfg.metric}-lambda{cfg.lmbda:g}-{stamp}"


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Owns the model, the optimizers, the data and the run folder of one training run.

    ``Trainer(config).fit()`` is what :func:`train` does; tests drive :meth:`train_step`
    directly. ``train_images`` / ``test_images`` (``(name, HxWx3 uint8)`` lists) override
    the folders of the config.
    """

    def __init__(
        self,
        config: Union[TrainConfig, Mapping[str, Any]],
        train_images: Optional[List[Tuple[str, Any]]] = None,
        test_images: Optional[List[Tuple[str, Any]]] = None,
    ):
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        cfg.validate()
        self.cfg = cfg
        self.ctx = init_distributed(cfg.device)
        self.device = self.ctx.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif self.ctx.distributed and self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, self.ctx.local_world_size)))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        # run folder (rank 0 names it, everyone agrees)
        if cfg.run_dir:
            run_dir = Path(cfg.run_dir)
        elif cfg.resume:
            raise ConfigError("resume needs the run folder (run_dir) of the run to continue")
        else:
            run_dir = broadcast_object(default_run_dir(cfg) if self.ctx.is_main else None)
        self.run_dir = Path(run_dir)
        if not cfg.resume and (self.run_dir / LATEST).exists():
            raise ConfigError(
                f"run folder '{self.run_dir}' already holds a checkpoint; resume it or choose another folder"
            )

        # data: the same images on every process
        self.train_images = train_images if train_images is not None else load_images(cfg.data_train, "train")
        self.test_images = test_images if test_images is not None else load_images(cfg.data_test, "test")
        self.crops = RandomCrops(self.train_images, cfg.patch_size, flips=cfg.flips, seed=cfg.seed)

        # model, loss, optimizers
        torch.manual_seed(cfg.seed)
        latest = self.run_dir / LATEST
        self._latest = read_checkpoint(latest, map_location="cpu") if cfg.resume and latest.exists() else None
        if self._latest is None:
            self.net: nn.Module = run_model(cfg)
            if cfg.init:
                init_weights(self.net, cfg.init)
        else:  # the model the run saved, whatever today's preset of its size (upgrade_config)
            self.net = build_model(self._latest["model_config"], source=f"checkpoint '{latest}'")
        self.net.to(self.device)
        self.criterion = RateDistortionLoss(cfg.lmbda, cfg.metric, cfg.ortho_weight)
        self.optimizer, self.aux_optimizer = configure_optimizers(self.net, cfg.lr, cfg.aux_lr)
        # one per-step schedule for both learning rates (the official GLIC code drops both to 1e-5);
        # "plateau" schedules the main rate only, on evaluation losses, as CompressAI-style code does
        self.plateau = cfg.lr_schedule not in PER_STEP_SCHEDULES
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_schedule, cfg.steps, cfg.lr_drop,
                                        cfg.plateau_factor, cfg.plateau_patience, warmup=cfg.warmup)
        self.aux_scheduler = make_scheduler(self.aux_optimizer, "constant" if self.plateau else cfg.lr_schedule,
                                            cfg.steps, cfg.lr_drop, warmup=0 if self.plateau else cfg.warmup)
        main_names, self.aux_names = split_parameters(self.net)
        params = dict(self.net.named_parameters())
        self.main_params = [params[n] for n in main_names]

        self.step = 0  # completed steps
        self.skipped = 0
        self.elapsed = 0.0
        self.cpu_elapsed = 0.0  # process CPU seconds of the training steps (all threads), summed over resumes
        self.best_eval_loss = math.inf
        self.last_eval: Dict[str, Any] = {}
        self.resumed_from: Optional[int] = None
        if cfg.resume:
            self._load_latest()

        self.model: nn.Module = self.net
        if self.ctx.distributed:
            self.model = wrap_ddp(self.net, self.device, ignore=self.aux_names)

        self.distortion_key = "mse_loss" if cfg.metric == "mse" else "ms_ssim_loss"
        self.term_keys = ["loss", "bpp_loss", self.distortion_key] + (
            ["ortho_loss"] if has_ortho_loss(self.net) else []
        )
        self._log: Optional[CSVLog] = None
        self._eval_log: Optional[CSVLog] = None

    # ------------------------------------------------------------------ setup
    def _load_latest(self) -> None:
        path, ckpt = self.run_dir / LATEST, self._latest
        if ckpt is None:
            if self.ctx.is_main:
                print(f"no checkpoint in '{self.run_dir}'; starting from step 0", file=sys.stderr)
            return
        self._latest = None
        changed = self.cfg.resume_changes(ckpt.get("config") or {}, f"'{self.run_dir}'")
        if changed and self.ctx.is_main:
            print(f"note: resuming with changed {', '.join(changed)}: the run will differ from an "
                  "uninterrupted one", file=sys.stderr)
        load_state_into(self.net, ckpt["state_dict"], source=f"checkpoint '{path}'")
        self.net.to(self.device)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.aux_scheduler.load_state_dict(ckpt["aux_scheduler"])
        for sched in (self.scheduler, self.aux_scheduler):
            extend_schedule(sched, self.cfg.steps, self.cfg.lr_drop)
        set_rng_state(ckpt.get("rng_state") or {})
        self.step = int(ckpt["step"])
        self.skipped = int(ckpt.get("skipped", 0))
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        self.cpu_elapsed = float(ckpt.get("cpu_elapsed", 0.0))
        metrics = ckpt.get("metrics") or {}
        self.best_eval_loss = float(metrics.get("best_eval_loss", math.inf))
        self.last_eval = dict(metrics.get("last_eval") or {})
        self.resumed_from = self.step

    def _open_logs(self) -> None:
        cols = ["step"] + self.term_keys + ["aux_loss", "grad_norm", "lr", "time", "step_time", "cpu_time", "skipped",
                                             "nonfinite"]
        ecols = ["step", "bpp", "psnr-rgb", "ms-ssim-rgb", "eval_loss", "best"] + [
            f"{k}-q{q}" for q, _ in self._levels() if q is not None for k in ("bpp", "psnr")]
        if self.resumed_from is not None:
            truncate_csv(self.run_dir / "log.csv", self.step)
            truncate_csv(self.run_dir / "eval.csv", self.step)
        self._log = CSVLog(self.run_dir / "log.csv", cols)
        self._eval_log = CSVLog(self.run_dir / "eval.csv", ecols)

    def _write_run_files(self) -> None:
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "results").mkdir(parents=True, exist_ok=True)
        self._lock = lock_run_dir(self.run_dir)  # one training process per run folder, until fit() ends
        cfg = self.cfg.to_dict()
        cfg["run_dir"] = str(self.run_dir)
        dump_yaml(cfg, self.run_dir / "config.yaml")
        env = environment_info(self.ctx, self.cfg.seed)
        env["resumed_from_step"] = self.resumed_from
        write_json(env, self.run_dir / "env.json")

    # ------------------------------------------------------------------ one step
    def train_step(self, x: torch.Tensor) -> Dict[str, Any]:
        """One optimizer step on the batch ``x``; returns the (process-averaged) loss terms.

        The result has the terms of the loss, ``aux_loss``, ``grad_norm``, ``lr`` and
        ``skipped`` (True when a non-finite loss or gradient norm prevented the update).
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]

        quality, lmbda = sample_rates(self.net, x.shape[0], self.cfg.rate_sampling)  # variable rate: per crop
        out = self.model(x) if quality is None else self.model(x, quality=quality.to(x.device))
        terms = self.criterion(out, x, self.net, lmbda=lmbda)
        aux = self.net.aux_loss()
        if not isinstance(aux, torch.Tensor):  # a model without entropy bottleneck
            aux = torch.zeros((), device=x.device)
        stats = torch.stack([terms[k].detach().float() for k in self.term_keys] + [aux.detach().float()])
        all_reduce_sum(stats)  # NaN anywhere -> NaN everywhere: every process takes the same decision
        stats /= self.ctx.world_size
        finite = bool(torch.isfinite(stats).all())

        # every process runs backward (DDP's gradient all-reduce needs them all)
        terms["loss"].backward()
        grad_norm = grad_norm_and_clip(self.main_params, self.cfg.clip_max_norm)
        skip = not (finite and math.isfinite(grad_norm))
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
        else:
            self.optimizer.step()
            if aux.requires_grad:
                aux.backward()
                self.aux_optimizer.step()
        with warnings.catch_warnings():  # a skipped first step is not the misuse this warns about
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            if not self.plateau:  # a plateau scheduler steps on evaluation losses (step_plateau)
                self.scheduler.step()
            self.aux_scheduler.step()

        result = {k: float(v) for k, v in zip(self.term_keys + ["aux_loss"], stats.tolist())}
        result.update(grad_norm=grad_norm, lr=lr, skipped=skip)
        return result

    # ------------------------------------------------------------------ evaluation / checkpoints
    def _levels(self) -> List[Tuple[Optional[int], float]]:
        return rate_points(self.cfg.lmbda, self.cfg.rate_lambdas)

    def evaluate(self) -> Dict[str, Any]:
        """Entropy-estimation bpp, PSNR and MS-SSIM on the test images, and the evaluation loss
        (:func:`~gnn_lic.training.rates.evaluate_rates`: every quality of a variable-rate model)."""
        return {"step": self.step, **evaluate_rates(self.net, self.test_images, self._levels(), self.cfg.metric)}

    def _metrics(self) -> Dict[str, Any]:
        return {"best_eval_loss": self.best_eval_loss, "last_eval": dict(self.last_eval)}

    def save_latest(self) -> Path:
        return save_checkpoint(
            self.run_dir / LATEST,
            self.net,
            step=self.step,
            optimizer=self.optimizer.state_dict(),
            aux_optimizer=self.aux_optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            aux_scheduler=self.aux_scheduler.state_dict(),
            rng_state=rng_state(),
            config=self.cfg.to_dict(),
            metrics=self._metrics(),
            skipped=self.skipped,
            elapsed=self.elapsed,
            cpu_elapsed=self.cpu_elapsed,
        )

    def save_best(self) -> Path:
        return save_checkpoint(
            self.run_dir / BEST, self.net, step=self.step, config=self.cfg.to_dict(), metrics=self._metrics()
        )

    def step_plateau(self, loss: Optional[float] = None) -> float:
        """Step the ``plateau`` scheduler on an evaluation loss; returns the main learning rate after it.

        Every process calls it after an evaluation; rank 0's ``loss`` (default: the loss of
        its last evaluation) is broadcast so that all processes keep the same rate.
        """
        if loss is None and self.ctx.is_main:
            loss = self.last_eval["eval_loss"]
        loss = broadcast_object(loss if self.ctx.is_main else None)
        self.scheduler.step(float(loss))
        return self.optimizer.param_groups[0]["lr"]

    def _eval_and_keep_best(self, bar) -> None:
        ev = self.evaluate()
        best = ev["eval_loss"] < self.best_eval_loss
        self.last_eval = ev
        if best:
            self.best_eval_loss = ev["eval_loss"]
            self.save_best()
        self._eval_log.write({**ev, "best": int(best)})
        msg = (f"step {self.step}: test bpp {ev['bpp']:.4f}  PSNR {ev['psnr-rgb']:.2f} dB  "
               f"MS-SSIM {ev['ms-ssim-rgb']:.4f}  eval loss {ev['eval_loss']:.4f}{'  (best)' if best else ''}")
        if bar is not None and not bar.disable:
            bar.write(msg)
        elif self.cfg.progress:
            print(msg, file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        """Train up to ``config.steps`` (or ``stop_after``) steps; returns the run folder."""
        from tqdm import tqdm  # noqa: PLC0415

        cfg, main = self.cfg, self.ctx.is_main
        if main:
            self._write_run_files()
            self._open_logs()
        barrier()
        stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        bar = tqdm(total=cfg.steps, initial=self.step, desc=rate_label(cfg.model, cfg.lmbda, cfg.rate_lambdas), unit="step",
                   disable=not (main and cfg.progress), dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
        try:
            while self.step < stop:
                s = self.step
                t0, c0 = time.perf_counter(), time.process_time()
                torch.manual_seed(step_seed(cfg.seed, s, 1, self.ctx.rank))
                x = self.crops.batch(s, cfg.batch_size, self.ctx.rank, self.ctx.world_size).to(self.device)
                r = self.train_step(x)
                self.step = s + 1
                dt = time.perf_counter() - t0
                self.elapsed += dt
                self.cpu_elapsed += time.process_time() - c0
                if main:
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps or r["skipped"]:
                        self._log.write({**r, "step": self.step, "time": self.elapsed, "step_time": dt,
                                         "cpu_time": self.cpu_elapsed,
                                         "skipped": self.skipped, "nonfinite": int(r["skipped"])})
                    bar.update(1)
                    post = {"loss": f"{r['loss']:.4g}", "bpp": f"{r['bpp_loss']:.3f}"}
                    if cfg.metric == "mse" and r["mse_loss"] > 0 and math.isfinite(r["mse_loss"]):
                        post["psnr"] = f"{-10 * math.log10(r['mse_loss']):.2f}"
                    if self.skipped:
                        post["skipped"] = self.skipped
                    bar.set_postfix(post, refresh=False)
                if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                    if main:
                        self._eval_and_keep_best(bar)
                    if self.plateau:  # before saving, so that a resumed run continues the same schedule
                        self.step_plateau()
                if main and (self.step % cfg.save_interval == 0 or self.step in (cfg.steps, stop)):
                    self.save_latest()
        except KeyboardInterrupt:
            if main and not self.ctx.distributed and self.step > 0:
                self.save_latest()
                print(f"\ninterrupted: saved step {self.step} to '{self.run_dir / LATEST}'", file=sys.stderr)
            raise
        finally:
            bar.close()
            if main:
                self._log.close()
                self._eval_log.close()
                if self._lock is not None:
                    self._lock.close()
        if main and self.step == cfg.steps and not (self.run_dir / LATEST).exists():
            self.save_latest()  # resumed at the end already: make sure latest.pt exists
        if main and self.step < cfg.steps:
            print(f"stopped after step {self.step} of {cfg.steps}; resume to continue", file=sys.stderr)
        barrier()
        return self.run_dir


def train(config: Union[TrainConfig, Mapping[str, Any]], **overrides: Any) -> Path:
    """Train one rate point (see the module docstring); returns the run folder.

    ``config`` is a :class:`TrainConfig` or a mapping of its fields; ``overrides`` replace fields.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if overrides:
        cfg = cfg.replace(**overrides)
    return Trainer(cfg).fit()
