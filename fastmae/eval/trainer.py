"""The loop ``fastmae linprobe`` and ``fastmae finetune`` share, on pretrain's machinery.

From :mod:`fastmae.train`: the optimizer-step loop (:class:`fastmae.train.loop.StepLoop`, the one
``fastmae pretrain`` runs), the train step (compile, bf16/fp16 autocast, accumulation under
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
from fastmae.train.distributed import (
    World,
    barrier,
    collective_failures,
    init_distributed,
    process_device,
    shutdown,
    wrap_model,
)
from fastmae.train.loop import Position, StepLoop, finite_mean, schedule_length
from fastmae.train.modeling import unwrap
from fastmae.train.optim import adamw
from fastmae.train.progress import Meter, Reporter
from fastmae.train.step import TrainStep, noise_seed

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


class EvalTrainer(StepLoop):
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
        self.steps_per_epoch, self.total_steps = schedule_length(len(self.batches), args)
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
        self._init_loop()
        self.max_accuracy = 0.0
        self.last_stats: dict[str, float] = {}
        self.evaluated_at = -1  # global step of the last evaluation
        self.checkpoint: Path | None = None
        self.reporter = Reporter(enabled=world.is_main, output_dir=args.output_dir, log_dir=args.log_dir,
                                 total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                                 epochs=args.epochs, bar=False if args.no_progress else None)

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        self._read_metrics()
        pos = self.position
        path = ckpt.checkpoint_path(self.args.output_dir, pos.global_step)
        if self.world.is_main:
            ckpt.atomic_save({
                "format": FORMAT, "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "train_step": self.train_step.state_dict(), "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch,
                "global_step": pos.global_step, "epoch_losses": list(self.epoch_losses),
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
        self.position = pos = Position(state["epoch"], state["step_in_epoch"], state["global_step"])
        self.epoch_losses = list(state["epoch_losses"])
        self.max_accuracy = float(state["max_accuracy"])
        ckpt.set_rng_state(state["rng"])
        self.reporter.print(f"resumed from {path} at epoch {pos.epoch}, step {pos.step_in_epoch} of "
                            f"{self.steps_per_epoch} (global step {pos.global_step})")

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        stats = evaluate(self.train_step._run_model, self.val, self.settings.autocast_dtype)
        self.evaluated_at = self.position.global_step
        self.max_accuracy = max(self.max_accuracy, stats["acc1"])
        self.reporter.print(f"epoch {self.position.epoch}: accuracy of the network on the {len(self.val.files)} "
                            f"test images: top-1 {stats['acc1']:.2f}%, top-5 {stats['acc5']:.2f}%, loss "
                            f"{stats['loss']:.4f} (max top-1 {self.max_accuracy:.2f}%)")
        return stats

    def _end_epoch(self) -> None:
        """Evaluate and append the official log.txt line for the epoch in progress (done or cut by --max_steps)."""
        self._read_metrics()
        stats = self.last_stats = self.evaluate()
        self.reporter.epoch({"train_lr": self.last_lr, "train_loss": finite_mean(self.epoch_losses),
                             **{f"test_{k}": v for k, v in stats.items()}, "epoch": self.position.epoch,
                             "n_parameters": self.n_parameters})
        self.reporter.scalars(self.position.global_step, {f"test/{k}": v for k, v in stats.items()})
        self.epoch_losses = []

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
        self._train(Meter())
        pos = self.position
        if self.evaluated_at != pos.global_step:
            self._end_epoch()  # stopped inside an epoch (--max_steps): still report where it stands
        if self.checkpoint != ckpt.checkpoint_path(args.output_dir, pos.global_step):
            self.save()
        self.reporter.print(f"done: {pos.global_step} steps; max top-1 {self.max_accuracy:.2f}%; checkpoint "
                            f"{self.checkpoint}")
        self.reporter.close()
        return self.last_stats


def run(args: argparse.Namespace) -> dict[str, float]:
    world = init_distributed("cuda" if (args.device or "").startswith("cuda") or
                             (args.device is None and torch.cuda.is_available()) else "cpu", args.dist_timeout)
    try:
        with collective_failures(world, args.dist_timeout):
            return EvalTrainer(args, world).run()
    finally:
        shutdown(world)
