"""DARTS (Liu et al., 2019): a differentiable search of one convolutional cell, on the 8x8 digits.

Cell: two input states (the outputs of the two previous cells, each mapped to C channels by a 1x1
ReLU-conv-BN) and `steps` intermediate nodes; node i sums one edge from every earlier state. In the
supernet every edge is a mixed edge ``sum_o softmax(alpha_e)_o * o(x)`` over `OPS`; the cell's output
is the concatenation of its intermediate nodes. All cells share one alpha [edges, ops]. There is no
reduction cell: 8x8 inputs are small enough to keep their resolution throughout.

Bilevel search, first order (xi = 0): each step updates alpha with Adam on a val batch, then the
weights with SGD on a train batch. Discretisation keeps, per node, the two incoming edges whose
strongest non-"none" op weighs most, each with that op (`discretise`); the derived network has the
same cells with only those edges, and is trained from scratch by the proxy.

Deviations from the paper, for a 2-core CPU: sep_conv is one depthwise-pointwise-BN stack (the paper
stacks two), no dilated convs, and the alpha learning rate is 10x the paper's 3e-4 (digits give ~16
steps an epoch, CIFAR-10 ~390).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from percli.nas.proxy import ProxyTask, accuracy

BATCH_RNG, ARCH_OPT = "search.batch_rng", "search.arch_opt"  # extra tensors of a saved search state
OPS = ("none", "skip_connect", "conv_3x3", "conv_5x5", "sep_conv_3x3", "max_pool_3x3", "avg_pool_3x3")
Genotype = list[list[tuple[str, int]]]  # per node: [(op, input state), (op, input state)]


@dataclass
class DartsConfig:
    """Supernet size and the optimisers (paper values unless noted in the module docstring)."""

    channels: int = 8
    """Channels C of every cell's nodes."""
    layers: int = 2
    """Cells in the network."""
    steps: int = 3
    """Intermediate nodes per cell (the paper: 4)."""
    epochs: int = 10
    """Search epochs over the train split."""
    batch_size: int = 64
    w_lr: float = 0.025
    """SGD learning rate of the weights (cosine to w_lr_min over the epochs)."""
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-3
    """Adam learning rate of alpha (10x the paper's 3e-4: digits give ~16 steps an epoch)."""
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3


# --------------------------------------------------------------------------- ops

class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def relu_conv_bn(c_in: int, c_out: int, kernel: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


def sep_conv(c: int, kernel: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


def make_op(name: str, c: int, affine: bool) -> nn.Module:
    """Operation `name` from OPS on C channels, keeping the spatial size."""
    builders = {"none": Zero, "skip_connect": nn.Identity,
                "conv_3x3": lambda: relu_conv_bn(c, c, 3, affine), "conv_5x5": lambda: relu_conv_bn(c, c, 5, affine),
                "sep_conv_3x3": lambda: sep_conv(c, 3, affine),
                "max_pool_3x3": lambda: nn.MaxPool2d(3, stride=1, padding=1),
                "avg_pool_3x3": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)}
    return builders[name]()


class MixedEdge(nn.Module):
    """sum_o w_o * o(x) over every op of OPS."""

    def __init__(self, c: int):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, c, affine=False) for name in OPS)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


# --------------------------------------------------------------------------- cell and network

def cell_edges(steps: int) -> list[tuple[int, int]]:
    """(input state, node) of every supernet edge, in alpha's row order; states 0, 1 are the cell inputs."""
    return [(state, node) for node in range(steps) for state in range(2 + node)]


class Cell(nn.Module):
    """A supernet cell (genotype None: mixed edges, forward takes the edge weights) or a derived one."""

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, steps: int, genotype: Genotype | None = None):
        super().__init__()
        affine = genotype is not None  # the paper's supernet BNs have no affine parameters
        self.pre0 = relu_conv_bn(c_prev_prev, c, 1, affine)
        self.pre1 = relu_conv_bn(c_prev, c, 1, affine)
        if genotype is None:
            self.links = cell_edges(steps)
            self.ops = nn.ModuleList(MixedEdge(c) for _ in self.links)
        else:
            self.links = [(state, node) for node, inputs in enumerate(genotype) for _, state in inputs]
            self.ops = nn.ModuleList(make_op(op, c, affine) for inputs in genotype for op, _ in inputs)
        self.steps = steps

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(self.steps):
            states.append(sum(op(states[src], weights[e]) if weights is not None else op(states[src])
                              for e, ((src, target), op) in enumerate(zip(self.links, self.ops)) if target == node))
        return torch.cat(states[2:], dim=1)  # [B, steps * C, H, W]


class DartsNetwork(nn.Module):
    """Stem conv, `layers` cells, global average pool, linear classifier; `alpha` only when searching."""

    def __init__(self, channels: int, layers: int, steps: int, num_classes: int, in_chans: int = 1,
                 genotype: Genotype | None = None, stem_multiplier: int = 3):
        super().__init__()
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev_prev, c_prev, cells = c_stem, c_stem, []
        for _ in range(layers):
            cells.append(Cell(c_prev_prev, c_prev, channels, steps, genotype))
            c_prev_prev, c_prev = c_prev, steps * channels
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_prev, num_classes)
        # the paper's init: 1e-3 * N(0, 1), i.e. an almost uniform softmax over the ops of every edge
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(cell_edges(steps)), len(OPS))) if genotype is None else None

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alpha"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.alpha, dim=-1) if self.alpha is not None else None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights)
        return self.classifier(s1.mean(dim=(2, 3)))  # [B, C, H, W] -> [B, C] -> [B, classes]


# --------------------------------------------------------------------------- discretisation

def discretise(weights: torch.Tensor, steps: int) -> Genotype:
    """Per node, the 2 incoming edges whose best non-"none" op weighs most, each with that op.

    `weights` [edges, ops] (softmax(alpha), rows in `cell_edges` order). Ties go to the earlier state.
    """
    none = OPS.index("none")
    genotype, row = [], 0
    for node in range(steps):
        rows = weights[row:row + 2 + node].clone()
        rows[:, none] = -1.0  # "none" can never be chosen
        strength, best_op = rows.max(dim=1)
        order = sorted(range(2 + node), key=lambda state: (-float(strength[state]), state))
        genotype.append([(OPS[int(best_op[state])], state) for state in sorted(order[:2])])
        row += 2 + node
    return genotype


# --------------------------------------------------------------------------- search

class DartsSearch:
    """The supernet, its two optimisers and the batch generator: everything a resumed search needs."""

    def __init__(self, task: ProxyTask, cfg: DartsConfig, seed: int = 0):
        self.task, self.cfg = task, cfg
        torch.manual_seed(seed)
        self.model = DartsNetwork(cfg.channels, cfg.layers, cfg.steps, task.num_classes, task.in_chans)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay)
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
        self.arch_opt = torch.optim.Adam([self.model.alpha], lr=cfg.arch_lr, betas=cfg.arch_betas,
                                         weight_decay=cfg.arch_weight_decay)
        self.batches = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def alpha_softmax(self) -> torch.Tensor:
        return F.softmax(self.model.alpha.detach(), dim=-1)

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the train split: per batch an alpha step on val, then a weight step on train."""
        start = time.perf_counter()
        task, cfg, model = self.task, self.cfg, self.model
        model.train()
        order = torch.randperm(len(task.y_train), generator=self.batches)
        losses = []
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            val_idx = torch.randint(0, len(task.y_val), (cfg.batch_size,), generator=self.batches)
            self.arch_opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(task.x_val[val_idx]), task.y_val[val_idx]).backward()  # first order: w fixed
            self.arch_opt.step()
            idx = order[i:i + cfg.batch_size]
            self.w_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.grad_clip)
            self.w_opt.step()
            losses.append(loss.item())
        self.w_sched.step()
        self.epoch += 1
        weights = self.alpha_softmax()
        return {"epoch": self.epoch, "train_loss": round(sum(losses) / len(losses), 4),
                "supernet_accuracy": accuracy(model, task.x_val, task.y_val),
                "alpha_softmax": [[round(w, 4) for w in row] for row in weights.tolist()],
                "genotype": discretise(weights, cfg.steps), "seconds": round(time.perf_counter() - start, 3)}

    def run(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        while self.epoch < self.cfg.epochs:
            on_epoch(self.train_epoch())

    def save(self, root: Path) -> Path:
        """The search state as `root/step_<epoch>` (safetensors + JSON, written aside and renamed: nothing
        unpickles, a crash never leaves half a state). Returns the checkpoint dir."""
        arch_tensors, arch_meta = flatten_optimizer(self.arch_opt.state_dict())
        tensors = {**self.model.state_dict(), BATCH_RNG: self.batches.get_state(),
                   **{f"{ARCH_OPT}.{k}": v for k, v in arch_tensors.items()}}
        trainer = {"epoch": self.epoch, "w_sched": self.w_sched.state_dict(), "arch_opt": arch_meta}
        return save_checkpoint(root, self.epoch, tensors, {"darts": "search state"}, self.w_opt.state_dict(),
                               trainer, keep_last=1)

    def load(self, checkpoint: Path) -> None:
        """Continue from a dir `save` wrote."""
        saved = load_checkpoint(checkpoint)
        tensors, trainer = saved["model"], saved["trainer_state"]
        arch = {k[len(ARCH_OPT) + 1:]: tensors.pop(k) for k in [k for k in tensors if k.startswith(f"{ARCH_OPT}.")]}
        self.batches.set_state(tensors.pop(BATCH_RNG))
        self.model.load_state_dict(tensors)
        self.w_opt.load_state_dict(saved["optimizer"])
        self.arch_opt.load_state_dict(unflatten_optimizer(arch, trainer["arch_opt"]))
        self.w_sched.load_state_dict(trainer["w_sched"])
        self.epoch = trainer["epoch"]


def derived_network(genotype: Genotype, cfg: DartsConfig, task: ProxyTask) -> DartsNetwork:
    """The discretised architecture (same cells and widths as the supernet), freshly initialised."""
    return DartsNetwork(cfg.channels, cfg.layers, len(genotype), task.num_classes, task.in_chans,
                        genotype=genotype)
