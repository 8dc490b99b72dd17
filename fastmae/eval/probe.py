"""A linear probe on precomputed features: the linear-probe head and optimizer, without the encoder.

For when the features fit in memory (the demo, quick checks): the official head (BatchNorm without
affine, then a linear layer, weight std 0.01) trained with LARS (blr 0.1, no weight decay) under
the warmup + cosine schedule, on fixed features (no augmentation).
"""

from __future__ import annotations

import torch
from torch import nn

from fastmae.eval.lars import LARS
from fastmae.eval.metrics import topk_correct
from fastmae.train.schedule import lr_for_step


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm1d(dim, affine=False, eps=1e-6) then Linear(dim, num_classes), weight trunc-normal std 0.01."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                          num_classes: int, *, epochs: int = 90, warmup_epochs: int = 10, batch_size: int = 256,
                          blr: float = 0.1, seed: int = 0) -> float:
    """Train the head on (train_x (n, D), train_y (n,)) and return its top-1 accuracy (%) on (val_x, val_y)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = probe_head(train_x.shape[1], num_classes).to(train_x.device)
    batch_size = min(batch_size, train_x.shape[0])
    steps_per_epoch = train_x.shape[0] // batch_size
    lr = blr * batch_size / 256
    optimizer = LARS(head.parameters(), lr=torch.tensor(lr), weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator).to(train_x.device)
        for step in range(steps_per_epoch):
            rows = order[step * batch_size:(step + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"].fill_(lr_for_step(epoch * steps_per_epoch + step, steps_per_epoch, lr, 0.0,
                                              warmup_epochs, epochs))
            loss = loss_fn(head(train_x[rows]), train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        correct = topk_correct(head(val_x), val_y, ks=(1,))
    return float(100.0 * correct[0] / val_x.shape[0])
