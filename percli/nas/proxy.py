"""The proxy task: train a candidate for a fixed number of steps on 8x8 digits, score it on held-out data.

scikit-learn bundles the UCI digits (1797 grey 8x8 images, 10 classes), so the search runs offline.
A fixed permutation splits them into train (1000), val (400, the search objective) and test (397,
reported, never used to choose). Pixels are standardised with the train split's mean and std.

Training is AdamW with a cosine learning rate, batches drawn with replacement by a generator seeded
with `seed`; the weights are initialised after `torch.manual_seed(seed)`, so a (config, seed) pair
always gives the same accuracy on one machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SPLIT_SEED = 0  # the train/val/test split is the same for every search
NUM_TRAIN, NUM_VAL = 1000, 400


@dataclass
class ProxyTask:
    """Images [N, C, H, W] and integer labels [N] of the three splits."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_chans(self) -> int:
        return self.x_train.shape[1]

    @property
    def img_size(self) -> int:
        return self.x_train.shape[-1]


@dataclass
class ProxyResult:
    accuracy: float  # on val: what the search maximises
    test_accuracy: float
    params: int
    seconds: float


def load_digits_task() -> ProxyTask:
    """scikit-learn's digits as a ProxyTask (train 1000 / val 400 / test 397)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # [N, 8, 8] -> [N, 1, 8, 8]
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    images, labels = images[order], labels[order]
    train = slice(0, NUM_TRAIN)
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    val, test = slice(NUM_TRAIN, NUM_TRAIN + NUM_VAL), slice(NUM_TRAIN + NUM_VAL, None)
    return ProxyTask("digits", images[train], labels[train], images[val], labels[val], images[test], labels[test],
                     num_classes=10)


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / total))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def train_proxy(build: Callable[[], nn.Module], task: ProxyTask, steps: int, seed: int, lr: float = 3e-3,
                batch_size: int = 64, weight_decay: float = 0.05) -> ProxyResult:
    """Build a model (seeded), train it `steps` steps on task's train split, return val/test accuracy."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, step, steps)
        idx = torch.randint(0, len(task.y_train), (batch_size,), generator=batches)
        loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return ProxyResult(accuracy(model, task.x_val, task.y_val), accuracy(model, task.x_test, task.y_test),
                       sum(p.numel() for p in model.parameters()), time.perf_counter() - start)
