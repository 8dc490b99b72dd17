"""Weighted cosine k-NN classification of features, the usual self-supervised monitor.

Each query votes with its ``k`` most cosine-similar reference features; neighbour j adds
``exp(sim_j / temperature)`` to its class. k = 20 and temperature 0.07 are the common choice.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from fastmae.data.files import FileSet

KNN_K = 20
KNN_TEMPERATURE = 0.07


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """queries (N, D), bank (M, D), bank_labels (M,) int64 -> class votes (N, num_classes) float32.

    Features are L2-normalised here; k is capped at M. Queries go in chunks of ``chunk`` rows so the
    (chunk, M) similarity matrix bounds the memory.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries (N, D) and bank (M, D) must share D, got {tuple(queries.shape)} and "
                         f"{tuple(bank.shape)}")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must be ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, index = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        out.append(votes.scatter_add_(1, bank_labels[index], (sim / temperature).exp()))
    return torch.cat(out)


class KnnMonitor:
    """The online k-NN monitor of ``fastmae pretrain --knn_every N``: cls-token features of a fixed labelled subset.

    Reference ("bank") images: ``num_images`` files of ``root/train`` (a fixed draw, seed 0); queries: up to
    ``num_images // 4`` files of ``root/val`` when it exists, else that many other train files. Centre crops
    at the model's input size. Every process computes the same numbers (the subset is small); the
    trainer reports rank 0's. Not under FSDP (the encoder's weights are sharded).
    """

    def __init__(self, root: str, input_size: int, device: torch.device, *, num_images: int = 2000,
                 batch_size: int = 250, num_workers: int = 0) -> None:
        from fastmae.eval.data import EvalLoader, split_folder

        train = split_folder(root, "train")
        num_classes = max(train.labels) + 1
        order = np.random.default_rng(0).permutation(len(train))
        num_queries = max(1, num_images // 4)
        if os.path.isdir(os.path.join(root, "val")):
            val = split_folder(root, "val")
            bank_ids = order[:num_images]
            query_set = _subset(val, np.random.default_rng(1).permutation(len(val))[:num_queries])
        else:
            if len(train) < 2:
                raise ValueError(f"--knn_data {root}: needs at least 2 images without a val folder")
            num_queries = min(num_queries, len(train) // 2)
            bank_ids, query_ids = order[num_queries:num_queries + num_images], order[:num_queries]
            query_set = _subset(train, query_ids)
        self.num_classes = num_classes
        self.loaders = [EvalLoader(files, min(batch_size, len(files)), input_size, device=device,
                                   num_workers=num_workers) for files in (_subset(train, bank_ids), query_set)]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> dict[str, float]:
        """{"top1", "top5"} (%) of the k-NN vote with ``model.forward_features(imgs)[:, 0]`` (the cls token)."""
        from fastmae.eval.data import extract_features
        from fastmae.eval.metrics import topk_correct

        device = self.loaders[0].device

        def features(imgs: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                return model.forward_features(imgs)[:, 0]

        (bank, bank_labels), (queries, labels) = (extract_features(features, loader) for loader in self.loaders)
        votes = knn_scores(queries, bank, bank_labels, self.num_classes)
        top1, top5 = (100.0 * topk_correct(votes, labels, (1, 5)) / labels.shape[0]).tolist()
        return {"top1": top1, "top5": top5}


    def report(self, model: torch.nn.Module, step: int, autocast_dtype: torch.dtype | None, reporter: object) -> None:
        """Evaluate (one host sync, between steps) and show top-1/top-5 on the console and in TensorBoard."""
        stats = self.evaluate(model, autocast_dtype)
        reporter.print(f"k-NN (k={KNN_K}, T={KNN_TEMPERATURE}) at step {step}: top-1 {stats['top1']:.2f}%, "
                       f"top-5 {stats['top5']:.2f}%")
        reporter.scalars(step, {f"knn/{k}": v for k, v in stats.items()})


def _subset(files: FileSet, ids: np.ndarray) -> FileSet:
    return FileSet(tuple(files.paths[i] for i in ids), tuple(files.labels[i] for i in ids))


def build_monitor(args: object, input_size: int, device: torch.device) -> KnnMonitor:
    """The monitor of ``fastmae pretrain --knn_every N`` (flags --knn_data, --knn_images, --batch_size)."""
    if args.fsdp:
        raise ValueError("--knn_every does not work with --fsdp (the encoder's weights are sharded)")
    root = args.knn_data or args.data_path
    if not root:
        raise ValueError("--knn_every needs labelled images: give --knn_data DIR (or --data_path)")
    if args.knn_images < 1:
        raise ValueError(f"--knn_images must be >= 1, got {args.knn_images}")
    return KnnMonitor(root, input_size, device, num_images=args.knn_images, batch_size=args.batch_size,
                      num_workers=min(args.num_workers or 0, 4))
