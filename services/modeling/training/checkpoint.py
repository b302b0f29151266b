"""Training checkpoints: enough to continue an interrupted ``noduleflow train`` run.

A checkpoint holds the network weights, the optimiser state, the :class:`TrainState`
(iteration, training minutes spent, smoothed loss), the schedule it follows (training
seconds, peak learning rate) and the random number generators (torch, numpy's global one
and the patch sampler's). It is written atomically (temporary file, then rename), so an
interruption while saving leaves the previous checkpoint in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.modeling.training.fit import TrainState

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class Resumed:
    """What :func:`load` restored besides weights, optimiser and generators."""

    state: TrainState
    #: the training time budget (s) of the cosine schedule the checkpoint follows
    seconds: float
    #: the peak learning rate of that schedule
    lr: float


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    assert isinstance(state, dict)
    inner = state["state"]
    return {**state, "state": {"key": [int(k) for k in inner["key"]], "pos": int(inner["pos"])}}


def _set_numpy_state(saved: dict[str, Any]) -> None:
    inner = saved["state"]
    key = np.asarray(inner["key"], dtype=np.uint32)
    np.random.set_state({**saved, "state": {"key": key, "pos": int(inner["pos"])}})


def save(
    path: Path,
    *,
    net: Any,
    optimizer: Any,
    state: TrainState,
    seconds: float,
    lr: float,
    sampler_rng: np.random.Generator | None = None,
) -> None:
    """Write the checkpoint of a run that is ``state`` into its ``seconds``-long schedule."""
    import torch

    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if sampler_rng is not None:
        rng["sampler"] = sampler_rng.bit_generator.state
    payload = {
        "format": FORMAT,
        "model": net.state_dict(),
        "frozen_batchnorm": bool(getattr(net, "frozen_batchnorm", False)),
        "optimizer": optimizer.state_dict(),
        "iteration": state.iteration,
        "elapsed_minutes": state.elapsed_s / 60.0,
        "smooth_loss": state.smooth_loss,
        "seconds": float(seconds),
        "lr": float(lr),
        "rng": rng,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    log.info(
        "event=checkpoint_saved path=%s it=%d elapsed_min=%.1f",
        path,
        state.iteration,
        state.elapsed_s / 60.0,
    )


def load(
    path: Path,
    *,
    net: Any,
    optimizer: Any,
    sampler_rng: np.random.Generator | None = None,
) -> Resumed:
    """Restore ``net``, ``optimizer`` and the generators from the checkpoint at ``path``.

    Build ``optimizer`` after the network is on its device (:func:`fit.prepare`): the state
    is moved to the parameters' device as it loads.
    """
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')}, expected {FORMAT}")
    net.load_state_dict(payload["model"])
    if payload["frozen_batchnorm"]:
        net.frozen_batchnorm = True
    optimizer.load_state_dict(payload["optimizer"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    _set_numpy_state(rng["numpy"])
    if sampler_rng is not None and "sampler" in rng:
        sampler_rng.bit_generator.state = rng["sampler"]
    state = TrainState(
        iteration=int(payload["iteration"]),
        elapsed_s=float(payload["elapsed_minutes"]) * 60.0,
        smooth_loss=payload["smooth_loss"],
    )
    log.info(
        "event=checkpoint_loaded path=%s it=%d elapsed_min=%.1f",
        path,
        state.iteration,
        state.elapsed_s / 60.0,
    )
    return Resumed(state, float(payload["seconds"]), float(payload["lr"]))
