"""``noduleflow train``: synthetic data → 3D U-Net → ONNX model folder.

Phases, each logged as it goes: phantom cases are generated and cached on the model grid
(``var/cache/train``), the network is trained on nodule-balanced, augmented patches with
BCE + soft Dice until the time budget is spent, then it is exported to ONNX and the
probability threshold is chosen on validation phantoms (seeds disjoint from training and
from the held-out evaluation seeds).

:func:`run` strings the steps together, each a function of its own: :func:`seed_everything`,
:func:`build_data` (cases cached, the rest cached by a background thread, the patch
sampler), :func:`build_model` (with an optional warm start), the training loop
(:mod:`~services.modeling.training.fit`, with :class:`Periodic` between iterations: new
cases, interim snapshots, checkpoints), :func:`export_model` and :func:`choose_threshold`.
Nothing here reads the environment: the CLI passes every setting in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.modeling.training import checkpoint as checkpoints
from services.modeling.training.fit import TrainState, fit, make_optimizer, prepare
from services.modeling.training.recipe import Recipe

if TYPE_CHECKING:
    from services.analysis.manifest import ModelManifest
    from services.modeling.training.dataset import CachedCase, PatchSampler
    from services.modeling.training.network import UNet3D
    from services.modeling.training.validate import ValCase

log = logging.getLogger(__name__)

CACHE_DIR = Path("var/cache/train")
RESERVE_S = 240.0  # kept back from the budget for export and validation
DATA_VERSION = 1  # bump when the phantom's images change, to rebuild the case cache
THREADS = 2  # torch CPU threads unless told otherwise
CHECKPOINT_S = 300.0  # training seconds between checkpoints (when a checkpoint path is given)

Progress = Callable[[int, int], None]


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        from services.core.logs import setup_logging

        setup_logging("INFO", service="train")


#: Slice thicknesses (mm) and their weights for training cases, like the phantom's own mix.
THICKNESSES = (
    (0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0),
    (0.12, 0.08, 0.22, 0.16, 0.1, 0.12, 0.1, 0.1),
)


def training_case(seed: int, domain: str = "v1") -> Any:
    """A phantom slab of 110–180 mm (not the whole chest): cheaper, so more cases per hour.

    ``v1`` slabs draw their thickness from :data:`THICKNESSES`; ``wide`` ones from the wide
    domain's own thickness mix (0.5–5 mm), with every other wide setting drawn as usual.
    """
    from services.modeling.phantom import generate_case
    from services.modeling.phantom.params import WIDE

    rng = np.random.default_rng([seed, 0x747261])
    if domain == "v1":
        thickness = float(rng.choice(THICKNESSES[0], p=THICKNESSES[1]))
    else:
        thickness = float(rng.choice(WIDE.thickness, p=WIDE.thickness_p))
    slices = int(np.clip(round(rng.uniform(110.0, 180.0) / thickness), 24, 400))
    return generate_case(seed, domain=domain, slices=slices, thickness=thickness)


def _generator(recipe: Recipe) -> Callable[[int], Any]:
    wide = frozenset(recipe.wide_seeds)

    def generate(seed: int) -> Any:
        return training_case(seed, "wide" if seed in wide else "v1")

    return generate


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def main(
    out: Path,
    minutes: float,
    seed: int,
    device: str,
    *,
    threads: int = THREADS,
    cache_dir: Path = CACHE_DIR,
    warm_start: Path | None = None,
    checkpoint: Path | None = None,
    checkpoint_s: float = CHECKPOINT_S,
    recipe: Recipe | None = None,
) -> None:
    """Train, export and validate; writes ``model.onnx``, ``model.fp16.onnx``, ``model.json``.

    With ``warm_start`` (a ``weights-*.pt`` file that an earlier run saved in the cache
    folder, or a shipped ``model.onnx``: batch norm folded, then kept frozen), training
    continues from those weights (fine-tuning at ``recipe.finetune_lr``) instead of starting
    from scratch. With ``checkpoint``, see :func:`run`.
    """
    _setup_logging()
    recipe = recipe or Recipe()
    run(
        out,
        minutes=minutes,
        seed=seed,
        device=device,
        recipe=recipe,
        generate=_generator(recipe),
        cache_dir=cache_dir,
        warm_start=warm_start,
        threads=threads,
        checkpoint=checkpoint,
        checkpoint_s=checkpoint_s,
    )


def run(
    out: Path,
    *,
    minutes: float,
    seed: int,
    device: str,
    recipe: Recipe,
    generate: Callable[[int], Any],
    cache_dir: Path = CACHE_DIR,
    snapshot_s: float | None = None,
    warm_start: Path | None = None,
    threads: int = THREADS,
    checkpoint: Path | None = None,
    checkpoint_s: float = CHECKPOINT_S,
) -> ModelManifest:
    """:func:`main` with the recipe, the case generator and the cache folder spelled out.

    Training starts once ``recipe.min_cases`` training cases are cached; the other cases (and
    then the validation cases) are generated by a background thread and join the sampler as
    they arrive. With ``snapshot_s``, an interim model (threshold 0.5) is published to
    ``out`` every ``snapshot_s`` seconds of training. With ``warm_start`` (a saved state dict
    or a ``model.onnx``), the network starts from those weights and trains at
    ``recipe.finetune_lr``.

    With ``checkpoint`` (a file path), the training state is saved there every
    ``checkpoint_s`` seconds of training and when training ends; if the file exists when the
    run starts, training continues from it (weights, optimiser, iteration, training time
    spent, learning-rate schedule, random generators) rather than from the start. The file
    is removed once the model is published.
    """
    import torch

    t0 = time.perf_counter()
    device = _device(device)
    seed_everything(seed, threads)
    log.info("event=train_start minutes=%.1f seed=%d device=%s out=%s", minutes, seed, device, out)
    tag = _tag(recipe)
    data = build_data(recipe, generate, cache_dir, seed=seed, tag=tag, t0=t0)
    net, fit_recipe = build_model(recipe, warm_start)
    prepare(net, device)
    optimizer = make_optimizer(net, fit_recipe)
    seconds = training_seconds(minutes, time.perf_counter() - t0)
    state = TrainState()
    resumed_at: dict[str, Any] | None = None
    if checkpoint is not None and checkpoint.exists():
        resumed = checkpoints.load(
            checkpoint, net=net, optimizer=optimizer, sampler_rng=data.sampler.rng
        )
        state, seconds = resumed.state, resumed.seconds
        fit_recipe = dataclasses.replace(fit_recipe, lr=resumed.lr)
        resumed_at = {
            "iteration": state.iteration,
            "elapsed_minutes": round(state.elapsed_s / 60.0, 2),
        }
    periodic = Periodic(
        data=data,
        net=net,
        optimizer=optimizer,
        recipe=recipe,
        out=out,
        seconds=seconds,
        lr=fit_recipe.lr,
        snapshot_s=snapshot_s,
        checkpoint=checkpoint,
        checkpoint_s=checkpoint_s,
        elapsed_s=state.elapsed_s,
    )
    stats = fit(
        net,
        data.sampler,
        fit_recipe,
        seconds=seconds,
        device=device,
        every=periodic,
        optimizer=optimizer,
        state=state,
    )
    stats["cases_used"] = len(data.sampler.cases)
    periodic.save_checkpoint(state)  # export and validation may still fail: keep the training
    net.to("cpu")
    val_cases = data.finish()
    provenance = {
        "data": "synthetic chest CT phantoms (services/modeling/phantom/)",
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "budget_minutes": minutes,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe.as_dict(),
        "resumed_from": warm_start.name if warm_start is not None else None,
        **stats,
    }
    if resumed_at is not None:
        provenance["resumed_checkpoint"] = resumed_at
    staging = out.parent / f".{out.name}.staging"
    manifest = export_model(net, staging, recipe, version="0", threshold=0.5, training=provenance)
    manifest = choose_threshold(
        staging, manifest, val_cases, recipe, progress=progress("validate", t0)
    )
    _publish(staging, out)
    torch.save(net.state_dict(), cache_dir / f"weights-{manifest.files['fp32'].sha256[:8]}.pt")
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    log.info(
        "event=train_done version=%s threshold=%.2f seconds=%.0f",
        manifest.version,
        manifest.threshold,
        time.perf_counter() - t0,
    )
    print(
        f"model {manifest.version} written to {out} (threshold {manifest.threshold:.2f})",
        file=sys.stderr,
    )
    return manifest


# ------------------------------------------------------------------------------- the steps


def progress(phase: str, t0: float) -> Progress:
    """A progress callback that logs ``phase``'s ``done`` count and the seconds since ``t0``."""

    def report(n: int, total: int) -> None:
        log.info("event=%s done=%d/%d elapsed_s=%.0f", phase, n, total, time.perf_counter() - t0)

    return report


def seed_everything(seed: int, threads: int) -> None:
    """Torch CPU threads, and the torch and numpy (global) generators seeded with ``seed``."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)


def training_seconds(minutes: float, spent_s: float) -> float:
    """Seconds of training in a ``minutes`` budget of which ``spent_s`` are gone, keeping
    :data:`RESERVE_S` for export and validation (at least 30 s, or half a short budget)."""
    budget = minutes * 60.0
    floor = min(30.0, 0.5 * budget)
    return max(floor, budget - spent_s - RESERVE_S)


def split_seeds(recipe: Recipe, cache_dir: Path, tag: str) -> tuple[list[int], list[int]]:
    """Training seeds to cache before training starts (those already cached, and at least
    ``recipe.min_cases``), and the rest, cached while it runs."""
    seeds = list(recipe.train_seeds)
    ready = [s for s in seeds if (cache_dir / f"{tag}-{s}.npz").exists()]
    first = (ready + [s for s in seeds if s not in ready])[: max(recipe.min_cases, len(ready))]
    return first, [s for s in seeds if s not in first]


def build_cases(
    seeds: Sequence[int],
    recipe: Recipe,
    generate: Callable[[int], Any],
    cache_dir: Path,
    tag: str,
) -> list[CachedCase]:
    """The training cases of ``seeds`` on the model grid, generated or from the cache."""
    from services.modeling.training import dataset

    return dataset.build_cache(
        seeds,
        cache_dir,
        spacing_mm=recipe.spacing_mm,
        window=recipe.hu_window,
        generate=generate,
        tag=tag,
    )


def make_sampler(recipe: Recipe, cases: Sequence[CachedCase], seed: int) -> PatchSampler:
    """The patch sampler over ``cases``, with the recipe's nodule balance and emphasis."""
    from services.modeling.training import dataset

    emphasis = dataset.Emphasis(
        subsolid=recipe.subsolid_weight,
        pleural=recipe.pleural_weight,
        mediastinum=recipe.mediastinum_fraction,
        small=recipe.small_weight,
        vascular=recipe.vascular_weight,
    )
    augment = dataset.Augment(
        gain=recipe.gain,
        shift=recipe.shift,
        texture_p=recipe.texture_p,
        sharpen_p=recipe.sharpen_p,
    )
    return dataset.PatchSampler(
        cases,
        recipe.train_patch,
        positive=recipe.positive_fraction,
        augment=augment,
        emphasis=emphasis,
        seed=seed,
    )


@dataclasses.dataclass
class TrainingData:
    """The sampler, and the cases a background thread is still caching."""

    sampler: PatchSampler
    #: training cases cached since the sampler was built, waiting to join it
    arrived: queue.Queue[CachedCase]
    #: validation cases, filled in by the background thread once the training cases are done
    val_cases: list[ValCase]
    worker: threading.Thread | None = None

    def take_arrived(self) -> int:
        """Add the cases that arrived to the sampler; how many."""
        n = 0
        while not self.arrived.empty():
            self.sampler.add(self.arrived.get())
            n += 1
        return n

    def finish(self) -> list[ValCase]:
        """Wait for the background caching; the validation cases."""
        if self.worker is not None:
            self.worker.join()
        return self.val_cases


def cache_rest(
    rest: Sequence[int],
    arrived: queue.Queue[CachedCase],
    val_cases: list[ValCase],
    recipe: Recipe,
    generate: Callable[[int], Any],
    cache_dir: Path,
    tag: str,
    *,
    done: int,
    total: int,
    t0: float,
) -> None:
    """Cache the training cases of ``rest`` into ``arrived``, one by one (``done`` of
    ``total`` are there already), then the validation cases into ``val_cases``."""
    from services.modeling.training import validate

    for n, s in enumerate(rest):
        arrived.put(build_cases([s], recipe, generate, cache_dir, tag)[0])
        progress("cache_train", t0)(done + n + 1, total)
    val_cases.extend(
        validate.build_val_cache(
            recipe.val_seeds,
            cache_dir,
            generate=generate,
            tag=tag,
            progress=progress("cache_val", t0),
        )
    )


def build_data(
    recipe: Recipe,
    generate: Callable[[int], Any],
    cache_dir: Path,
    *,
    seed: int,
    tag: str,
    t0: float,
) -> TrainingData:
    """Cache the first training cases, start caching the rest (then the validation cases)
    in a background thread, and build the patch sampler over the first ones."""
    first, rest = split_seeds(recipe, cache_dir, tag)
    cases = build_cases(first, recipe, generate, cache_dir, tag)
    total = len(first) + len(rest)
    progress("cache_train", t0)(len(cases), total)
    arrived: queue.Queue[CachedCase] = queue.Queue()
    val_cases: list[ValCase] = []
    worker = threading.Thread(
        target=cache_rest,
        args=(rest, arrived, val_cases, recipe, generate, cache_dir, tag),
        kwargs={"done": len(first), "total": total, "t0": t0},
        name="case-cache",
        daemon=True,
    )
    worker.start()
    return TrainingData(make_sampler(recipe, cases, seed), arrived, val_cases, worker)


def build_model(recipe: Recipe, warm_start: Path | None = None) -> tuple[UNet3D, Recipe]:
    """The network, from ``warm_start`` weights if given, and the recipe to train it with
    (``recipe.finetune_lr`` as its learning rate after a warm start)."""
    import torch

    from services.modeling.training.network import UNet3D

    net = UNet3D(recipe.channels)
    if warm_start is None:
        return net, recipe
    if warm_start.suffix == ".onnx":
        from services.modeling.training.warmstart import load_onnx

        load_onnx(net, warm_start)  # batch norm folded: trained frozen from here on
        fit_recipe = dataclasses.replace(recipe, lr=recipe.finetune_lr)
        log.info("event=train_resume onnx=%s lr=%g", warm_start.name, fit_recipe.lr)
    else:
        net.load_state_dict(torch.load(warm_start, map_location="cpu", weights_only=True))
        fit_recipe = dataclasses.replace(recipe, lr=recipe.finetune_lr)
        log.info("event=train_resume weights=%s lr=%g", warm_start.name, fit_recipe.lr)
    return net, fit_recipe


def export_options(recipe: Recipe) -> dict[str, Any]:
    """What ``model.json`` takes from the recipe: grid, window, tiling, test-time flips."""
    return dict(
        spacing_mm=recipe.spacing_mm,
        hu_window=recipe.hu_window,
        patch_size=recipe.tile,
        overlap=recipe.overlap,
        flip_axes=recipe.flip_axes,
    )


def export_model(
    net: UNet3D,
    staging: Path,
    recipe: Recipe,
    *,
    version: str,
    threshold: float,
    training: dict[str, Any],
) -> ModelManifest:
    """Export ``net`` to ONNX (fp32, fp16) with its ``model.json`` into ``staging``."""
    from services.modeling.training import export

    return export.export(
        net,
        staging,
        version=version,
        threshold=threshold,
        training=training,
        **export_options(recipe),
    )


def publish_snapshot(net: UNet3D, recipe: Recipe, out: Path, iteration: int) -> None:
    """Publish a copy of ``net`` as an interim model (threshold 0.5) to ``out``."""
    from services.modeling.training.network import UNet3D

    copy = UNet3D(recipe.channels)
    copy.load_state_dict(net.state_dict())
    staging = out.parent / f".{out.name}.snapshot"
    export_model(
        copy.eval(),
        staging,
        recipe,
        version=f"0.{iteration}-interim",
        threshold=0.5,
        training={"interim": True, "iterations": iteration},
    )
    _publish(staging, out)
    log.info("event=snapshot_published it=%d out=%s", iteration, out)


def choose_threshold(
    staging: Path,
    manifest: ModelManifest,
    val_cases: Sequence[ValCase],
    recipe: Recipe,
    *,
    progress: Progress | None = None,
) -> ModelManifest:
    """Choose the threshold of the model in ``staging`` on ``val_cases``; set it, the final
    version and the validation metrics in ``manifest`` and rewrite its ``model.json``."""
    from services.analysis.engine import Engine
    from services.modeling.training import export, validate

    engine = Engine.load(staging, "cpu")
    threshold, scores = validate.choose_threshold(
        engine, val_cases, recipe.thresholds, progress=progress
    )
    manifest.threshold = threshold
    manifest.version = f"1.0.0+{datetime.now(UTC):%Y%m%d}.{manifest.files['fp32'].sha256[:8]}"
    manifest.metrics = {"validation": scores}
    export.write_manifest(manifest, staging)
    return manifest


class Periodic:
    """What :func:`fit` does every few iterations (its ``every``): cases that arrived join
    the sampler, an interim model is published every ``snapshot_s`` seconds of wall time and
    the checkpoint is saved every ``checkpoint_s`` seconds of training."""

    def __init__(
        self,
        *,
        data: TrainingData,
        net: UNet3D,
        optimizer: Any,
        recipe: Recipe,
        out: Path,
        seconds: float,
        lr: float,
        snapshot_s: float | None = None,
        checkpoint: Path | None = None,
        checkpoint_s: float = CHECKPOINT_S,
        elapsed_s: float = 0.0,
    ) -> None:
        self.data = data
        self.net = net
        self.optimizer = optimizer
        self.recipe = recipe
        self.out = out
        self.seconds = seconds
        self.lr = lr
        self.snapshot_s = snapshot_s or float("inf")
        self.next_snapshot = self.snapshot_s
        self.started = time.perf_counter()
        self.checkpoint = checkpoint
        self.checkpoint_s = checkpoint_s
        self.next_checkpoint = elapsed_s + checkpoint_s

    def __call__(self, state: TrainState) -> None:
        self.data.take_arrived()
        if time.perf_counter() - self.started >= self.next_snapshot:
            self.next_snapshot += self.snapshot_s
            publish_snapshot(self.net, self.recipe, self.out, state.iteration)
        if self.checkpoint is not None and state.elapsed_s >= self.next_checkpoint:
            self.save_checkpoint(state)

    def save_checkpoint(self, state: TrainState) -> None:
        """Save the checkpoint now (if the run has a checkpoint path)."""
        if self.checkpoint is None:
            return
        checkpoints.save(
            self.checkpoint,
            net=self.net,
            optimizer=self.optimizer,
            state=state,
            seconds=self.seconds,
            lr=self.lr,
            sampler_rng=self.data.sampler.rng,
        )
        self.next_checkpoint = state.elapsed_s + self.checkpoint_s


def _publish(staging: Path, out: Path) -> None:
    """Move a staged model into ``out``: ONNX files first, the manifest last."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "model.fp16.onnx", "model.json"):
        (staging / name).replace(out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _tag(recipe: Recipe) -> str:
    """Cache key: model grid, window and :data:`DATA_VERSION`."""
    digest = hashlib.sha256(f"{recipe.spacing_mm}{recipe.hu_window}{DATA_VERSION}".encode())
    return "case-" + digest.hexdigest()[:10]
