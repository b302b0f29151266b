"""The training loop: BCE + soft Dice on augmented patches, cosine LR over wall time.

Its parts, each usable on its own: :func:`prepare` (network to the device, training mode),
:func:`make_optimizer`, :func:`learning_rate` (warm-up, then cosine over the time budget),
:func:`train_step` (one optimiser step on one batch) and :func:`fit`, the loop that runs
them until the time budget is spent, keeping its progress in a :class:`TrainState` (which a
checkpoint saves, and from which a resumed run continues).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.modeling.training.recipe import Recipe

log = logging.getLogger(__name__)


#: target mass (voxels) above which a patch counts as holding a nodule for the per-patch Dice
POSITIVE_VOXELS = 8.0
#: iterations of linear learning-rate warm-up
WARMUP = 30
#: ``every`` is called at the first iteration and then every this many iterations
EVERY = 25


@dataclass
class TrainState:
    """How far training has come: what a checkpoint keeps besides weights and optimiser."""

    iteration: int = 0
    #: training wall time spent so far, earlier (resumed) runs included
    elapsed_s: float = 0.0
    #: exponentially smoothed loss (None before the first iteration)
    smooth_loss: float | None = None


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX).

    Without it, bfloat16 autocast falls back to emulation that is far slower than float32
    (measured on a busy 2-core AVX2 CPU: about 28 s per iteration with one thread, against
    0.56 s in float32 with two).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def loss_fn(logits: Any, target: Any, dice_weight: float) -> Any:
    """BCE on soft targets + soft Dice (foreground).

    The Dice is the mean over the patches that hold a nodule, each patch scored on its own,
    so a 4 mm nodule weighs as much as a 25 mm one (a batch-pooled Dice is dominated by the
    largest nodule in the batch); patches without a nodule add their predicted foreground
    as a false-positive penalty through the pooled term.
    """
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dim=dims)
    total = prob.sum(dim=dims) + target.sum(dim=dims)
    per_patch = 1.0 - (2.0 * inter + 1.0) / (total + 1.0)
    positive = target.sum(dim=dims) >= POSITIVE_VOXELS
    pooled = 1.0 - (2.0 * inter.sum() + 1.0) / (total.sum() + 1.0)
    dice = per_patch[positive].mean() if bool(positive.any()) else pooled
    return bce + dice_weight * 0.5 * (dice + pooled)


def prepare(net: Any, device: str) -> bool:
    """``net`` on ``device`` in training mode (batch norms frozen where the network asks for
    it); returns whether inputs go channels-last (on CPU). Calling it again changes nothing."""
    import torch

    net.to(device).train()
    if getattr(net, "frozen_batchnorm", False):
        from services.modeling.training.warmstart import freeze_batchnorm

        freeze_batchnorm(net)
    channels_last = device == "cpu"
    if channels_last:
        net.to(memory_format=torch.channels_last_3d)
    return channels_last


def make_optimizer(net: Any, recipe: Recipe) -> Any:
    """AdamW over ``net``'s parameters (build it after :func:`prepare`, so that a restored
    optimiser state lands on the parameters' device)."""
    import torch

    return torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def learning_rate(recipe: Recipe, iteration: int, frac: float) -> float:
    """Linear warm-up over :data:`WARMUP` iterations, then cosine decay over the time budget
    (``frac``: the fraction of it spent)."""
    warm = min(1.0, (iteration + 1) / WARMUP)
    return recipe.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def train_step(
    net: Any,
    optimizer: Any,
    xs: Any,
    ys: Any,
    *,
    lr: float,
    device: str,
    dice_weight: float,
    bf16: bool = False,
    channels_last: bool = False,
) -> float:
    """One optimiser step on the batch ``(xs, ys)`` (numpy) at learning rate ``lr``; the loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    x = torch.from_numpy(xs).to(device)
    y = torch.from_numpy(ys).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    loss = loss_fn(logits.float(), y, dice_weight)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def fit(
    net: Any,
    sampler: Any,
    recipe: Recipe,
    *,
    seconds: float,
    device: str,
    every: Callable[[TrainState], None] | None = None,
    optimizer: Any = None,
    state: TrainState | None = None,
) -> dict[str, Any]:
    """Train ``net`` in place for ``seconds`` of wall time (cosine LR over that time).

    The schedule follows wall time, not an iteration count, so a run ends on time on a
    shared machine; ``every(state)`` is called at the first and then every :data:`EVERY`
    iterations (snapshots, checkpoints, new data). With ``optimizer`` and ``state`` (both
    restored from a checkpoint), training continues where they left off: the time already
    spent (``state.elapsed_s``) counts against ``seconds``, and a state that has used it all
    trains no further. ``state`` is updated in place.
    """
    import torch

    channels_last = prepare(net, device)
    bf16 = recipe.bf16 and device == "cpu" and cpu_has_bf16()
    log.info("event=train_precision device=%s bf16=%s", device, bf16)
    opt = optimizer if optimizer is not None else make_optimizer(net, recipe)
    state = state if state is not None else TrainState()
    started = time.perf_counter() - state.elapsed_s
    while (elapsed := time.perf_counter() - started) < seconds or state.iteration == 0:
        lr = learning_rate(recipe, state.iteration, elapsed / seconds)
        xs, ys = sampler.batch(recipe.batch)
        value = train_step(
            net,
            opt,
            xs,
            ys,
            lr=lr,
            device=device,
            dice_weight=recipe.dice_weight,
            bf16=bf16,
            channels_last=channels_last,
        )
        smooth = state.smooth_loss
        state.smooth_loss = value if smooth is None else 0.95 * smooth + 0.05 * value
        state.iteration += 1
        state.elapsed_s = time.perf_counter() - started
        it = state.iteration
        if it % EVERY == 0 or it == 1:
            elapsed = state.elapsed_s
            log.info(
                "event=train_progress it=%d loss=%.4f lr=%.5f s_per_it=%.2f elapsed_s=%.0f "
                "left_s=%.0f",
                it,
                state.smooth_loss,
                lr,
                elapsed / it,
                elapsed,
                max(0.0, seconds - elapsed),
            )
            if every is not None:
                every(state)
    net.to(memory_format=torch.contiguous_format).eval()
    state.elapsed_s = time.perf_counter() - started
    return {
        "iterations": state.iteration,
        "final_loss": round(float(state.smooth_loss or 0.0), 4),
        "train_seconds": round(state.elapsed_s, 1),
    }
