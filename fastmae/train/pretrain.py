"""``fastmae pretrain``: the MAE pretraining loop.

    fastmae pretrain --model mae_vit_base_patch16 --data_path /data/imagenet --batch_size 256 \
        --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --norm_pix_loss --output_dir out
    torchrun --nproc_per_node 8 -m fastmae pretrain ...    # DDP; add --fsdp for FSDP2

The loop reads the device only every ``--log_every`` steps, at checkpoints and at epoch ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fastmae._version import __version__
from fastmae.errors import CheckpointError, FastmaeUserError, ScheduleError, one_line
from fastmae.models import load_official_checkpoint
from fastmae.train import checkpoint as ckpt
from fastmae.train import official
from fastmae.train.args import Settings, describe, parse_args, resolve
from fastmae.train.batches import BatchSource, build_batches
from fastmae.train.config import save_config, saved_flags
from fastmae.train.distributed import (
    ProcessGroupError,
    World,
    barrier,
    collective_failures,
    init_distributed,
    process_device,
    shutdown,
    wrap_model,
)
from fastmae.train.lock import own_output_dir
from fastmae.train.loop import Position, StepLoop, finite_mean, schedule_length
from fastmae.train.master_weights import MasterWeights
from fastmae.train.modeling import build_model, default_img_size, unwrap
from fastmae.train.optim import build_optimizer
from fastmae.train.precision import autocast_dtype, resolve_weights
from fastmae.train.progress import Meter, Reporter
from fastmae.train.signals import StopRequest, exit_code, resume_command
from fastmae.train.step import NonFiniteLossError, TrainStep


@dataclass
class TrainResult:
    """What a finished run returns (to the demo and the tests)."""

    losses: list[float] = field(default_factory=list)  # mean loss of every optimizer step of this run
    global_step: int = 0
    checkpoint: Path | None = None
    model: nn.Module | None = None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal ended the run early (checkpoint saved)
    exit_code: int = 0  # what the CLI exits with: 0, or 128 + the signal number


class Trainer(StepLoop):
    nonfinite_advice = ("Each was skipped without changing the weights. Try --precision bf16, a lower --blr or "
                        "more --warmup_epochs, and check the data for corrupt images; the last checkpoint holds "
                        "the weights before the trouble.")

    def __init__(self, args: argparse.Namespace, world: World) -> None:
        self.args, self.world = args, world
        self.settings: Settings = resolve(args, world.size)
        self.device = process_device(self.settings.device, world)
        self.input_size = args.input_size or default_img_size(args.model)
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        model = build_model(args.model, attn_backend=args.attn, norm_pix_loss=args.norm_pix_loss,
                             img_size=self.input_size)
        if args.init_from:
            with ckpt.fitting(f"--init_from {args.init_from}"):
                loaded = load_official_checkpoint(model, ckpt.model_state(ckpt.load_checkpoint(args.init_from)))
            self.init_note = f"{args.init_from} ({'encoder only' if loaded.encoder_only else 'full'})"
        else:
            self.init_note = "random (official init)"
        model.to(self.device)
        model.set_grad_checkpointing(args.grad_checkpointing)
        model.set_recompute(args.recompute)
        self.weights = resolve_weights(args.weights, self.settings.precision, args.fsdp)
        # bf16 weights: FSDP2 gathers its fp32 shards in bf16 itself; otherwise fp32 masters in the optimizer
        self.master = MasterWeights(model) if self.weights == "bf16" and not args.fsdp else None
        param_dtype = autocast_dtype(self.weights) if args.fsdp else None
        self.model = wrap_model(model, world, fsdp=args.fsdp, param_dtype=param_dtype)
        self.optimizer = build_optimizer(self.model if args.fsdp else model, self.settings.lr, args.weight_decay,
                                         master=self.master)
        self.batches: BatchSource = build_batches(args, self.settings.loader, self.device, world.rank, world.size,
                                                  self.input_size)
        self.steps_per_epoch, self.total_steps = schedule_length(len(self.batches), args)
        self.train_step = TrainStep(
            self.model, self.optimizer, num_patches=unwrap(model).num_patches, mask_ratio=args.mask_ratio,
            accum_iter=args.accum_iter, device=self.device, autocast_dtype=self.settings.autocast_dtype,
            compile=self.settings.compile, compile_backend=args.compile_backend, seed=args.seed,
            rank=world.rank, world_size=world.size, log_every=args.log_every, master=self.master)
        self.reporter = Reporter(enabled=world.is_main, output_dir=args.output_dir, log_dir=args.log_dir,
                                 total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                                 epochs=args.epochs, bar=False if args.no_progress else None,
                                 wandb_project=args.wandb_project, config=saved_flags(args))
        self._init_loop()
        self.result = TrainResult(losses=self.losses, model=unwrap(self.model))
        self.knn = None
        if args.knn_every:
            from fastmae.eval.knn import build_monitor

            self.knn = build_monitor(args, self.input_size, self.device)
        self.last_model_state: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        self._read_metrics()  # flush the device-side counters into the state we save
        model_state, optim_state = ckpt.gather_training_state(self.model, self.optimizer, self.args.fsdp)
        if self.master is not None:
            model_state = self.master.full_precision(model_state)  # checkpoints hold fp32 weights either way
        path = ckpt.checkpoint_path(self.args.output_dir, self.position.global_step)
        self.last_model_state = model_state  # full tensors, also under FSDP
        if self.world.is_main:
            args = self.args
            ckpt.atomic_save({
                "format": ckpt.FORMAT,
                "model": model_state,
                "optimizer": optim_state,
                "train_step": self.train_step.state_dict(),
                "epoch": self.position.epoch,
                "step_in_epoch": self.position.step_in_epoch,
                "global_step": self.position.global_step,
                "data_position": {"seed": args.seed, "epoch": self.position.epoch,
                                  "micro_step": self.position.step_in_epoch * args.accum_iter},
                "epoch_losses": list(self.epoch_losses),
                "args": ckpt.plain_args(args),
                "rng": ckpt.rng_state(),
            }, path)
            ckpt.prune_checkpoints(self.args.output_dir, self.args.keep_last)
        barrier(self.world)
        self.result.checkpoint = path
        return path

    def resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if official.is_official_training_checkpoint(state):
            self._resume_official(path, state)
            return
        if state.get("format") != ckpt.FORMAT:
            raise CheckpointError(f"--resume {path}: neither a fastmae checkpoint nor an official training checkpoint "
                             f"{{model, optimizer, epoch, ...}} (it holds {sorted(state)[:6]}); use --init_from "
                             "to start from weights only")
        saved_model = state["args"].get("model")
        if saved_model != self.args.model:
            raise CheckpointError(f"--resume {path} was trained with --model {saved_model}, not {self.args.model}")
        with ckpt.fitting(f"--resume {path}"):
            ckpt.restore_training_state(self.model, self.optimizer, state["model"], state["optimizer"],
                                        self.args.fsdp)
            if self.master is not None:
                self.master.load(state["model"])
            self.train_step.load_state_dict(state["train_step"])
        self.position = Position(state["epoch"], state["step_in_epoch"], state["global_step"])
        self.epoch_losses = list(state["epoch_losses"])
        ckpt.set_rng_state(state["rng"])
        self.reporter.forget_epochs_from(self.position.epoch)  # logged after this checkpoint: logged again
        self.init_note = (f"resumed from {path} (fastmae checkpoint: epoch {self.position.epoch}, step "
                          f"{self.position.step_in_epoch} of {self.steps_per_epoch}, global step "
                          f"{self.position.global_step}; weights, optimizer, RNG and data position restored)")

    def _resume_official(self, path: Path, state: dict[str, object]) -> None:
        """An official {model, optimizer, epoch, scaler} file: continue at the start of the next epoch."""
        if self.args.fsdp:
            raise ValueError(f"--resume {path}: an official checkpoint resumes without --fsdp (one process or DDP)")
        model = unwrap(self.model)
        if load_official_checkpoint(model, ckpt.model_state(state)).encoder_only:
            raise ValueError(f"--resume {path}: encoder-only weights cannot be resumed; use --init_from")
        if self.master is not None:
            self.master.load(ckpt.model_state(state))
        self.optimizer.load_state_dict(official.convert_optimizer_state(state["optimizer"], model,
                                                                        self.optimizer.state_dict()))
        scaler = self.train_step.scaler
        scaler_note = "no scaler state"
        if state.get("scaler"):
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
                scaler_note = "GradScaler restored"
            else:
                scaler_note = f"its GradScaler state unused ({self.settings.precision} needs none)"
        epoch = int(state["epoch"]) + 1  # the official files are written when epoch `epoch` is done
        self.position = Position(epoch, 0, epoch * self.steps_per_epoch)
        self.init_note = (f"resumed from {path} (official checkpoint: epoch {epoch - 1} done, continuing at epoch "
                          f"{epoch}, global step {self.position.global_step}; weights and AdamW moments restored, "
                          f"{scaler_note}; the official file has no RNG or data position)")

    # ---------------------------------------------------------------- the loop hooks
    def _micro_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return batch[0]  # pretraining needs no labels

    def _after_step(self) -> None:
        if self.knn is not None and self.position.global_step % self.args.knn_every == 0:
            self.knn.report(unwrap(self.model), self.position.global_step, self.settings.autocast_dtype,
                            self.reporter)

    def _log_extras(self) -> dict[str, float]:
        return {"skipped": float(self.skipped_total), "replaced": float(getattr(self.batches, "replaced", 0))}

    def run(self) -> TrainResult:
        try:
            with StopRequest() as stop:
                self._run(stop)
        finally:
            self.reporter.close()
        if self.master is not None:
            self.master.release()  # the returned model holds the trained fp32 weights, as the checkpoint does
        return self.result

    def _save_config(self) -> Path | None:
        """OUTPUT_DIR/config.yaml (or .json): the flags and what they resolved to (rank 0)."""
        if not self.world.is_main:
            return None
        settings = self.settings
        return save_config(self.args, {
            "device": str(settings.device), "precision": settings.precision, "weights": self.weights,
            "compile": settings.compile,
            "loader": settings.loader, "world_size": settings.world_size, "effective_batch": settings.effective_batch,
            "lr": settings.lr, "input_size": self.input_size, "init": self.init_note,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "fastmae": __version__,
            "torch": str(torch.__version__),
        }, self.args.output_dir)

    def _run(self, stop: StopRequest) -> None:
        args, pos = self.args, self.position
        resume_path = ckpt.resolve_resume(args.resume, args.output_dir)
        if resume_path is not None:
            self.resume(resume_path)
            pos = self.position
        self._check_trains_something(resume_path)
        config_path = self._save_config()
        self.reporter.print("fastmae pretrain\n" + describe(args, self.settings, {
            "input size": self.input_size,
            "attention": args.attn,
            "grad checkpointing": args.grad_checkpointing,
            "recompute": args.recompute,
            # FSDP2's fp32 shards are a master copy too (gathered in the low-precision dtype)
            "weights": self.weights + (", fp32 master in the optimizer" if self.weights != "fp32" else ""),
            "sharding": "FSDP2" if args.fsdp else ("DDP" if self.world.size > 1 else "none"),
            "init": self.init_note,
            "steps": f"{self.total_steps} optimizer steps, {self.steps_per_epoch} per epoch",
            "config": f"{config_path} (log: {Path(args.output_dir) / 'train.log'})",
        }))
        meter = Meter()
        stopping = self._train(meter, stop)
        if self.result.checkpoint != ckpt.checkpoint_path(args.output_dir, pos.global_step):
            self.save()
        self.result.global_step = pos.global_step
        self.reporter.summary(pos.global_step, meter, skipped=self.skipped_total,
                              replaced=getattr(self.batches, "replaced", 0),
                              bad_files=len(getattr(self.batches, "bad_files", ())),
                              stopped_by=stop.name if stopping else None)
        if stopping:
            self.result.stopped_by, self.result.exit_code = stop.name, exit_code(stop.signum)
            nproc = int(os.environ.get("LOCAL_WORLD_SIZE", self.world.size))
            self.reporter.warn(f"stopped by {stop.name} at step {pos.global_step}; checkpoint "
                               f"{self.result.checkpoint}. Resume with:\n  "
                               + resume_command(str(config_path), str(self.result.checkpoint), self.world.size, nproc))
            return
        if self.world.is_main:
            encoder_path = Path(args.output_dir) / ckpt.ENCODER_FILE
            encoder_keys = unwrap(self.model).encoder_state_dict().keys()
            encoder = ckpt.export_encoder({k: self.last_model_state[k] for k in encoder_keys}, encoder_path)
            self.reporter.print(f"done: {pos.global_step} steps; checkpoint {self.result.checkpoint}, "
                                f"encoder-only weights {encoder}")

    def _check_trains_something(self, resumed: Path | None) -> None:
        args, pos = self.args, self.position
        if pos.epoch < args.epochs and pos.global_step < self.total_steps:
            return
        where = (f"--resume {resumed} is at epoch {pos.epoch}, global step {pos.global_step}" if resumed else
                 f"--start_epoch {args.start_epoch} starts at global step {pos.global_step}")
        end = (f"--epochs {args.epochs}" if pos.epoch >= args.epochs else
               f"--max_steps {args.max_steps}")
        raise ScheduleError(f"{where}, already the end set by {end}: this schedule trains nothing; "
                            f"raise {end.split()[0]} (or lower --start_epoch)")

    def _end_epoch(self) -> None:
        self._read_metrics()
        self.reporter.epoch({"train_lr": self.last_lr, "train_loss": finite_mean(self.epoch_losses),
                             "epoch": self.position.epoch, "steps": len(self.epoch_losses),
                             "skipped": self.skipped_total})
        self.epoch_losses = []


def train(args: argparse.Namespace) -> TrainResult:
    """Run ``fastmae pretrain`` with parsed flags (the Python API, :func:`fastmae.train.api.pretrain`, wraps this)."""
    official.apply_launcher_flags(args)
    world = init_distributed("cuda" if (args.device or "").startswith("cuda") or
                             (args.device is None and torch.cuda.is_available()) else "cpu", args.dist_timeout)
    try:
        with collective_failures(world, args.dist_timeout), own_output_dir(args.output_dir, world):
            return Trainer(args, world).run()
    finally:
        shutdown(world)


def main(argv: Sequence[str] | None = None) -> int:
    from fastmae.train.api import pretrain

    try:
        result = pretrain(parse_args(argv))
    except (ValueError, FileNotFoundError, FastmaeUserError) as error:
        print(f"fastmae pretrain: error: {one_line(error)}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, ProcessGroupError) as error:
        print(f"fastmae pretrain: stopped: {error}", file=sys.stderr)
        return 1
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
