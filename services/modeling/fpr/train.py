"""Train the second stage on mined shards, resumable from a checkpoint (torch, CPU or GPU).

Batches are drawn in equal thirds from positives (nodules found by stage one and nodule
centres moved a little), hard negatives (stage one's false candidates, real-CT negatives)
and easy negatives (random lung-tissue and lung-border points). Every sample is flipped
along each axis and turned by quarter turns in-plane at random (the patches follow the
volume's axes, so orientation must not matter), given a little noise and contrast change,
and now and then blurred along the slice axis as a thick-slice reconstruction would be.

A checkpoint (network, optimiser, iteration, minutes spent, random state) is written every
``CHECKPOINT_EVERY`` iterations and at the end; a run given the same checkpoint path
continues from it, so a long training can span several sittings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

from services.modeling.fpr.mine import Shard
from services.modeling.fpr.network import PatchNet

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 25


@dataclass
class Samples:
    """Mined samples in memory (patches stay float16 until a batch is drawn)."""

    patches: NDArray[np.float16]
    labels: NDArray[np.int8]
    sources: NDArray[np.int8]
    scan: NDArray[np.int32]  # index into ``names``
    names: list[str]

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Samples:
        shards = [Shard.load(p) for p in paths]
        shards = [s for s in shards if len(s.labels)]
        return cls(
            patches=np.concatenate([s.patches for s in shards]),
            labels=np.concatenate([s.labels for s in shards]),
            sources=np.concatenate([s.sources for s in shards]),
            scan=np.concatenate(
                [np.full(len(s.labels), n, dtype=np.int32) for n, s in enumerate(shards)]
            ),
            names=[s.name for s in shards],
        )

    def pools(self) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
        """Indices of positives, hard negatives and easy negatives."""
        pos = np.flatnonzero(self.labels == 1)
        hard = np.flatnonzero((self.labels == 0) & (self.sources == 0))
        easy = np.flatnonzero((self.labels == 0) & (self.sources > 0))
        return pos, hard, easy


def augment(batch: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Flips, in-plane quarter turns, z blur, noise and contrast, per sample."""
    out = np.empty_like(batch)
    for n, x in enumerate(batch):
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                x = np.flip(x, axis)
        x = np.rot90(x, int(rng.integers(4)), axes=(2, 3))
        if rng.random() < 0.3:
            width = int(rng.integers(2, 4))
            x = ndimage.uniform_filter1d(x, width, axis=1, mode="nearest")
        x = x * np.float32(rng.uniform(0.92, 1.08)) + np.float32(rng.uniform(-0.03, 0.03))
        x = x + rng.normal(0.0, rng.uniform(0.0, 0.04), x.shape).astype(np.float32)
        out[n] = x
    return out


def draw(
    samples: Samples, pools: Sequence[NDArray[np.intp]], batch: int, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    live = [p for p in pools if len(p)]
    picks = np.concatenate([rng.choice(p, size=batch // len(live) + 1) for p in live])[:batch]
    x = augment(samples.patches[picks].astype(np.float32), rng)
    return x, samples.labels[picks].astype(np.float32)


def train(
    samples: Samples,
    checkpoint: Path,
    *,
    minutes: float,
    max_iterations: int = 100_000,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int | None = None,
    device: str = "cpu",
) -> PatchNet:
    """Train (or continue training) the patch network; returns it in eval mode."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = PatchNet().to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    iteration, spent = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        iteration, spent = int(state["iteration"]), float(state["minutes"])
        rng.bit_generator.state = state["rng"]
        log.info("event=fpr_resume iteration=%d minutes=%.1f", iteration, spent)
    loss_fn = nn.BCEWithLogitsLoss()
    pools = samples.pools()
    log.info(
        "event=fpr_train positives=%d hard=%d easy=%d", len(pools[0]), len(pools[1]), len(pools[2])
    )
    started = time.monotonic()
    running = 0.0
    budget = minutes + spent
    while iteration < max_iterations:
        now = spent + (time.monotonic() - started) / 60.0
        if now >= budget:
            break
        for group in optimiser.param_groups:  # cosine decay over the whole budget
            group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * min(1.0, now / max(budget, 1e-6))))
        net.train()
        x, y = draw(samples, pools, batch, rng)
        logits = net(torch.from_numpy(x).to(device))
        loss = loss_fn(logits, torch.from_numpy(y).to(device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        iteration += 1
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if iteration > 1 else value
        if iteration % CHECKPOINT_EVERY == 0:
            _save(checkpoint, net, optimiser, iteration, now, rng)
            log.info("event=fpr_step iteration=%d loss=%.4f minutes=%.1f", iteration, running, now)
    _save(checkpoint, net, optimiser, iteration, spent + (time.monotonic() - started) / 60.0, rng)
    return net.eval()


def _save(
    path: Path,
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    iteration: int,
    minutes: float,
    rng: np.random.Generator,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {
        "net": net.state_dict(),
        "optimiser": optimiser.state_dict(),
        "iteration": iteration,
        "minutes": minutes,
        "rng": rng.bit_generator.state,
    }
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> PatchNet:
    net = PatchNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["net"])
    return net.eval()


def to_onnx(net: PatchNet, opset: int = 17) -> bytes:
    """The network as ONNX: input ``patch`` (n, 2, P, P, P), output ``logit`` (n,)."""
    from services.analysis.patches import PATCH, SCALES_MM
    from services.modeling.training.export import traced

    example = torch.zeros(2, len(SCALES_MM), PATCH, PATCH, PATCH)
    return traced(net, example, ("patch", "logit"), {0: "n"}, opset=opset)
