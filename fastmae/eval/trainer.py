"""The loop ``fastmae linprobe`` and ``fastmae finetune`` share, on pretrain's machinery.

From :mod:`fastmae.train`: the train step (compile, bf16/fp16 autocast, accumulation under
``no_sync``, device-side skip of non-finite steps, no host sync), the lr schedule, DDP, the
loaders, atomic checkpoints with RNG state and data position (so ``--resume`` continues at the
exact step), and the progress display / TensorBoard / log.txt. What is particular to classification
lives here: the loss with mixup/cutmix, label smoothing and random erasing
(:class:`ClassifierStep`), the evaluation after every epoch (top-1, top-5, loss) and the
classifier's optimizer (LARS on the head for the linear probe, AdamW with layer-wise lr decay for
fine-tuning).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmae.eval import recipes
from fastmae.eval.args import default_accum_iter
from fastmae.eval.data import EvalLoader, split_folder
from fastmae.eval.erasing import erase_boxes, random_erase
from fastmae.eval.lars import LARS
from fastmae.eval.layer_decay import layer_decay_groups
from fastmae.eval.metrics import topk_correct
from fastmae.eval.mixup import Mixup, smooth_one_hot, soft_target_cross_entropy
from fastmae.eval.vit import VisionTransformer, build_classifier
from fastmae.eval.weights import load_pretrained
from fastmae.train import checkpoint as ckpt
from fastmae.train.args import describe, resolve
from fastmae.train.distributed import World, barrier, init_distributed, process_device, shutdown, wrap_model
from fastmae.train.modeling import unwrap
from fastmae.train.optim import adamw, set_lr
from fastmae.train.progress import Meter, Reporter, peak_memory_gb
from fastmae.train.schedule import lr_for_step
from fastmae.train.step import NonFiniteLossError, TrainStep, noise_seed

FORMAT = "fastmae-eval-checkpoint-1"


class ClassifierStep(TrainStep):
    """TrainStep on (images, labels) micro-batches: erasing, mixup/cutmix or label smoothing, soft-target CE.

    The host-side draws (erasing boxes, mixup lam and box) come from NumPy generators seeded with
    (seed, step, micro-step, rank), the erasing noise from the step's device generator: nothing to
    save for an exact resume, nothing read back from the device.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, num_classes: int,
                 mixup: Mixup | None, smoothing: float, reprob: float, **step_options: object) -> None:
        super().__init__(model, optimizer, num_patches=0, mask_ratio=0.0, **step_options)  # no masking noise
        self.num_classes, self.mixup, self.smoothing, self.reprob = num_classes, mixup, smoothing, reprob

    def micro_step_loss(self, step: int, micro_step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        rng = np.random.default_rng([self.seed, step, micro_step, self.rank])
        if self.reprob > 0:
            self._generator.manual_seed(noise_seed(self.seed, step, micro_step * self.world_size + self.rank))
            boxes = erase_boxes(images.shape[0], images.shape[-2], images.shape[-1], rng, self.reprob)
            images = random_erase(images, boxes, self._generator)
        if self.mixup is not None:
            images, target = self.mixup(images, labels, rng)
        else:
            target = smooth_one_hot(labels, self.num_classes, self.smoothing)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self._run_model(images)
        return soft_target_cross_entropy(logits, target)


@torch.no_grad()
def evaluate(model: nn.Module, loader: EvalLoader, autocast_dtype: torch.dtype | None) -> dict[str, float]:
    """{"loss", "acc1", "acc5"} (accuracies in %) over every image of ``loader``.

    A sharded loader (``--dist_eval``) has its sums (loss, top-1 and top-5 hits, images) all-reduced
    over the processes: every rank returns the figures of the whole set.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    sums = torch.zeros(4, device=device)  # loss sum, top-1 hits, top-5 hits, images
    for images, labels, valid in loader:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        sums[0] += (loss * valid).sum()
        sums[1:3] += topk_correct(logits, labels, (1, 5), valid)
        sums[3] += valid.sum()
    if loader.world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, top1, top5, count = sums.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc1": 100.0 * top1 / count, "acc5": 100.0 * top5 / count}


def build_optimizer(model: VisionTransformer, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """Linear probe: LARS on the head only. Fine-tuning: fused AdamW over the layer-decay groups."""
    if args.recipe == "linprobe":
        device = next(model.parameters()).device
        return LARS(model.head.parameters(), lr=torch.tensor(lr, device=device), weight_decay=args.weight_decay)
    groups = layer_decay_groups(model, model.depth, args.weight_decay, args.layer_decay)
    return adamw(groups, lr, betas=recipes.ADAMW_BETAS)


class EvalTrainer:
    """Linear probe or fine-tuning of ``args.model`` on ``args.data_path`` (``args.recipe`` says which)."""

    def __init__(self, args: argparse.Namespace, world: World) -> None:
        self.args, self.world = args, world
        linprobe = args.recipe == "linprobe"
        if args.accum_iter is None:
            args.accum_iter = default_accum_iter(args.batch_size, world.size) if linprobe else 1
        self.settings = resolve(args, world.size)
        self.device = process_device(self.settings.device, world)
        torch.manual_seed(args.seed)  # the same head (and random-init encoder) on every rank
        model = build_classifier(args.model, args.nb_classes, img_size=args.input_size, global_pool=args.global_pool,
                                 drop_path_rate=args.drop_path, linear_probe=linprobe, attn_backend=args.attn)
        self.input_size = model.patch_embed.img_size[0]
        if args.finetune:
            loaded = load_pretrained(model, args.finetune)
            self.init_note = f"{args.finetune} ({loaded.source}; {loaded.loaded} tensors, trained from init: " \
                             f"{', '.join(loaded.missing_keys) or 'none'})"
        else:
            self.init_note = "random (MAE init; no --finetune given)"
        if linprobe:
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("head.")
        model.to(self.device)
        self.n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.model = wrap_model(model, world, fsdp=False, param_dtype=None)
        self.optimizer = build_optimizer(model, args, self.settings.lr)
        from fastmae.data import build_loader

        self.batches = build_loader(
            args.data_path, args.batch_size, self.input_size, backend=self.settings.loader, device=self.device,
            rank=world.rank, world_size=world.size, seed=args.seed, num_workers=args.num_workers,
            scale=(args.crop_scale_min, 1.0), rand_augment=None if linprobe else args.aa)
        # --dist_eval: each process scores its shard; else every process scores the whole set (official)
        shards = world.size if args.dist_eval else 1
        self.val = EvalLoader(split_folder(args.data_path, "val"), args.batch_size, self.input_size,
                              device=self.device, rank=world.rank if args.dist_eval else 0, world_size=shards,
                              num_workers=self.batches.config.num_threads,
                              crop_pct=recipes.eval_crop_pct(self.input_size))
        self.steps_per_epoch = len(self.batches) // args.accum_iter
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has {len(self.batches)} batches per process, fewer than --accum_iter "
                             f"{args.accum_iter}: give a smaller --batch_size or --accum_iter, or more data")
        self.total_steps = args.epochs * self.steps_per_epoch
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        mixup = None
        if not linprobe and (args.mixup > 0 or args.cutmix > 0):
            mixup = Mixup(args.nb_classes, args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob,
                          args.smoothing)
        self.train_step = ClassifierStep(
            self.model, self.optimizer, num_classes=args.nb_classes, mixup=mixup,
            smoothing=0.0 if linprobe else args.smoothing, reprob=0.0 if linprobe else args.reprob,
            accum_iter=args.accum_iter, device=self.device, autocast_dtype=self.settings.autocast_dtype,
            compile=self.settings.compile, compile_backend=args.compile_backend, seed=args.seed, rank=world.rank,
            world_size=world.size, log_every=args.log_every)
        self.epoch, self.step_in_epoch, self.global_step = args.start_epoch, 0, args.start_epoch * self.steps_per_epoch
        self.epoch_losses: list[float] = []
        self.display_losses: list[float] = []
        self.losses: list[float] = []  # every step of this run (for the tests)
        self.max_accuracy = 0.0
        self.last_lr = 0.0
        self.evaluated_at = -1  # global step of the last evaluation
        self.checkpoint: Path | None = None
        self.reporter = Reporter(enabled=world.is_main, output_dir=args.output_dir, log_dir=args.log_dir,
                                 total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                                 epochs=args.epochs, bar=False if args.no_progress else None)

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        self._read_metrics()
        path = ckpt.checkpoint_path(self.args.output_dir, self.global_step)
        if self.world.is_main:
            ckpt.atomic_save({
                "format": FORMAT, "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "train_step": self.train_step.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "epoch_losses": list(self.epoch_losses),
                "max_accuracy": self.max_accuracy, "args": ckpt.plain_args(self.args), "rng": ckpt.rng_state(),
            }, path)
            ckpt.prune_checkpoints(self.args.output_dir, self.args.keep_last)
        barrier(self.world)
        self.checkpoint = path
        return path

    def resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if state.get("format") != FORMAT:
            raise ValueError(f"--resume {path}: not a fastmae {self.args.recipe} checkpoint (pretrained weights go "
                             f"to --finetune)")
        for name in ("recipe", "model", "nb_classes", "global_pool"):
            if state["args"].get(name) != getattr(self.args, name):
                raise ValueError(f"--resume {path} was run with --{name} {state['args'].get(name)}, not "
                                 f"{getattr(self.args, name)}")
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.train_step.load_state_dict(state["train_step"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.epoch_losses = list(state["epoch_losses"])
        self.max_accuracy = float(state["max_accuracy"])
        ckpt.set_rng_state(state["rng"])
        self.reporter.print(f"resumed from {path} at epoch {self.epoch}, step {self.step_in_epoch} of "
                            f"{self.steps_per_epoch} (global step {self.global_step})")

    # ---------------------------------------------------------------- metrics
    def _read_metrics(self) -> None:
        metrics = self.train_step.read_metrics()
        for losses in (self.losses, self.epoch_losses, self.display_losses):
            losses.extend(metrics.losses)
        if metrics.longest_skip_run >= self.args.max_skipped:
            raise NonFiniteLossError(
                f"{metrics.longest_skip_run} optimizer steps in a row had a non-finite loss (limit --max_skipped "
                f"{self.args.max_skipped}); stopped at step {self.global_step}. Try a lower --blr or --precision bf16.")

    def _log(self, meter: Meter) -> None:
        self._read_metrics()
        img_per_s, data_share = meter.interval()
        finite = [v for v in self.display_losses if math.isfinite(v)]
        self.display_losses = []
        self.reporter.step(self.global_step, {
            "loss": sum(finite) / len(finite) if finite else float("nan"), "lr": self.last_lr,
            "img_per_s": img_per_s, "data_share": data_share, "peak_mem_gb": peak_memory_gb(self.device)})

    def evaluate(self) -> dict[str, float]:
        stats = evaluate(self.train_step._run_model, self.val, self.settings.autocast_dtype)
        self.evaluated_at = self.global_step
        self.max_accuracy = max(self.max_accuracy, stats["acc1"])
        self.reporter.print(f"epoch {self.epoch}: accuracy of the network on the {len(self.val.files)} test images: "
                            f"top-1 {stats['acc1']:.2f}%, top-5 {stats['acc5']:.2f}%, loss {stats['loss']:.4f} "
                            f"(max top-1 {self.max_accuracy:.2f}%)")
        return stats

    def _end_epoch(self) -> dict[str, float]:
        """Evaluate and append the official log.txt line for the epoch in progress (done or cut by --max_steps)."""
        self._read_metrics()
        stats = self.evaluate()
        finite = [v for v in self.epoch_losses if math.isfinite(v)]
        self.reporter.epoch({"train_lr": self.last_lr, "train_loss": sum(finite) / max(len(finite), 1),
                             **{f"test_{k}": v for k, v in stats.items()}, "epoch": self.epoch,
                             "n_parameters": self.n_parameters})
        self.reporter.scalars(self.global_step, {f"test/{k}": v for k, v in stats.items()})
        self.epoch_losses = []
        return stats

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, float]:
        """Train (or only evaluate with --eval); return the last test stats."""
        args = self.args
        resume_path = ckpt.resolve_resume(args.resume, args.output_dir)
        if args.eval:
            if resume_path is not None:
                state = ckpt.load_checkpoint(resume_path, map_location=self.device)
                unwrap(self.model).load_state_dict(ckpt.model_state(state))
            stats = evaluate(self.train_step._run_model, self.val, self.settings.autocast_dtype)
            self.reporter.print(f"accuracy of the network on the {len(self.val.files)} test images: top-1 "
                                f"{stats['acc1']:.2f}%, top-5 {stats['acc5']:.2f}%, loss {stats['loss']:.4f}")
            self.reporter.close()
            return stats
        if resume_path is not None:
            self.resume(resume_path)
        self.reporter.print(f"fastmae {args.recipe}\n" + describe(args, self.settings, {
            "input size": self.input_size, "pooling": "global average + fc_norm" if args.global_pool else "cls token",
            "init": self.init_note, "trained parameters": f"{self.n_parameters:,}",
            "steps": f"{self.total_steps} optimizer steps, {self.steps_per_epoch} per epoch",
        }))
        meter, stats = Meter(), {}
        while self.epoch < args.epochs and self.global_step < self.total_steps:
            self.batches.set_epoch(self.epoch, start_step=self.step_in_epoch * args.accum_iter)
            batches = iter(self.batches)
            while self.step_in_epoch < self.steps_per_epoch and self.global_step < self.total_steps:
                micro_batches = []
                for _ in range(args.accum_iter):
                    waited = time.perf_counter()
                    micro_batches.append(next(batches))
                    meter.wait_data(time.perf_counter() - waited)
                self.last_lr = lr_for_step(self.global_step, self.steps_per_epoch, self.settings.lr, args.min_lr,
                                           args.warmup_epochs, args.epochs)
                set_lr(self.optimizer, self.last_lr)
                self.train_step(self.global_step, micro_batches)
                self.global_step += 1
                self.step_in_epoch += 1
                meter.images += self.settings.effective_batch
                if self.global_step % args.log_every == 0:
                    self._log(meter)
                epoch_done = self.step_in_epoch == self.steps_per_epoch
                if epoch_done:
                    stats = self._end_epoch()
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if (args.save_every and self.global_step % args.save_every == 0) or \
                        (not args.save_every and epoch_done):
                    self.save()
                if epoch_done:
                    break
        self._read_metrics()
        if self.display_losses:
            self._log(meter)
        if self.evaluated_at != self.global_step:
            stats = self._end_epoch()  # stopped inside an epoch (--max_steps): still report where it stands
        if self.checkpoint != ckpt.checkpoint_path(args.output_dir, self.global_step):
            self.save()
        self.reporter.print(f"done: {self.global_step} steps; max top-1 {self.max_accuracy:.2f}%; checkpoint "
                            f"{self.checkpoint}")
        self.reporter.close()
        return stats


def run(args: argparse.Namespace) -> dict[str, float]:
    world = init_distributed("cuda" if (args.device or "").startswith("cuda") or
                             (args.device is None and torch.cuda.is_available()) else "cpu")
    try:
        return EvalTrainer(args, world).run()
    finally:
        shutdown(world)
