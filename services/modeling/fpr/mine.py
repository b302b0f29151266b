"""Mine training samples for the second stage: patches with a true/false label.

Four sources per phantom (``Shard.sources``):

0. stage one's candidates at the second stage's low threshold (recall first; no rescoring,
   second stage, mass pass or operating point), labelled by the truth (LUNA16 hit rule:
   within a nodule's radius of its centre) — the hard negatives;
1. every nodule of 3 mm or more, at its centre moved by up to a third of its radius;
2. random points in the lungs on solid-ish tissue (vessels, bronchial walls, fissures);
3. random points just outside the lungs on soft tissue (heart border, diaphragm, wall).

Points 2 and 3 keep clear of every nodule. Real CT gives negatives only: stage-one
candidates and tissue points well away from its annotated lesion. One shard (``.npz``) per
scan, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.analysis.geometry import Volume
from services.analysis.patches import candidate_patches

log = logging.getLogger(__name__)

#: stage one's threshold when the second stage decides
CANDIDATE_THRESHOLD = 0.1
#: real CT: points this far beyond an annotated lesion's radius count as negatives
REAL_MARGIN_MM = 15.0
#: per phantom: copies of each nodule, random lung-tissue and lung-border points
JITTERED_COPIES = 3
RANDOM_TISSUE = 16
RANDOM_BORDER = 8
AVOID_MARGIN_MM = 5.0

Point = tuple[float, float, float]


@dataclass
class Shard:
    """The samples of one scan."""

    name: str
    patches: NDArray[np.float16]  # (n, 2, P, P, P)
    labels: NDArray[np.int8]  # 1 true, 0 false
    sources: NDArray[np.int8]  # 0 stage one, 1 nodule, 2 lung tissue, 3 lung border
    truth_diameters: NDArray[np.float32]  # the nodule's diameter, 0 for false
    nodules: int  # scored (≥ 3 mm) nodules in the scan
    nodules_hit: int  # of those, hit by at least one stage-one candidate

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        meta = {"name": self.name, "nodules": self.nodules, "nodules_hit": self.nodules_hit}
        np.savez(
            tmp,
            patches=self.patches,
            labels=self.labels,
            sources=self.sources,
            truth_diameters=self.truth_diameters,
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Shard:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            return cls(
                name=str(meta["name"]),
                patches=data["patches"],
                labels=data["labels"],
                sources=data["sources"],
                truth_diameters=data["truth_diameters"],
                nodules=int(meta["nodules"]),
                nodules_hit=int(meta["nodules_hit"]),
            )


def stage_one(engine: Any, volume: Volume, threshold: float = CANDIDATE_THRESHOLD) -> list[Any]:
    """Every stage-one candidate of ``volume``, with the network's own confidence."""
    from services.analysis.pipeline import analyze_volume

    saved = engine.config
    engine.config = dataclasses.replace(
        saved,
        threshold=threshold,
        # measured on the network's own boundary, as the pipeline measures what it reports
        measure_threshold=max(threshold, saved.measure_threshold or saved.threshold),
        rescorer=None,
        stage2=None,
        masses=None,
    )
    try:
        return analyze_volume(volume, engine, all_candidates=True)
    finally:
        engine.config = saved


def patches_at(volume: Volume, centers_mm: Sequence[Sequence[float]]) -> NDArray[np.float16]:
    centers = volume.lps_to_index(np.asarray(centers_mm, dtype=np.float64).reshape(-1, 3))
    return candidate_patches(volume.hu, volume.spacing, centers).astype(np.float16)


def random_points(
    volume: Volume,
    rng: np.random.Generator,
    avoid: Sequence[tuple[Sequence[float], float]],
    *,
    tissue: int = RANDOM_TISSUE,
    border: int = RANDOM_BORDER,
) -> tuple[list[Point], list[int]]:
    """LPS points on lung tissue (source 2) and on the lungs' border (source 3).

    ``avoid``: ``(centre_mm, radius_mm)`` pairs to keep ``AVOID_MARGIN_MM`` clear of.
    """
    from services.analysis.lungs import lung_mask

    lungs = lung_mask(volume.hu, volume.spacing)
    stride = np.asarray(lungs.stride)
    filled = lungs.filled if lungs.filled is not None else lungs.mask
    hu = volume.hu[:: stride[0], :: stride[1], :: stride[2]]
    shape = tuple(min(a, b) for a, b in zip(hu.shape, filled.shape, strict=True))
    hu = hu[: shape[0], : shape[1], : shape[2]]
    inner = filled[: shape[0], : shape[1], : shape[2]]
    outer = lungs.mask[: shape[0], : shape[1], : shape[2]]
    pools = ((inner & (hu >= -500), tissue, 2), (outer & ~inner & (hu >= -200), border, 3))
    points: list[Point] = []
    sources: list[int] = []
    for pool, count, source in pools:
        where = np.argwhere(pool)
        taken = 0
        for idx in rng.permutation(len(where))[: count * 4]:
            kji = (where[idx] + rng.uniform(0, 1, 3)) * stride
            lps = volume.index_to_lps(kji)
            if any(np.linalg.norm(lps - np.asarray(c)) <= r + AVOID_MARGIN_MM for c, r in avoid):
                continue
            points.append((float(lps[0]), float(lps[1]), float(lps[2])))
            sources.append(source)
            taken += 1
            if taken >= count:
                break
    return points, sources


def mine_phantom(engine: Any, seed: int, **case_kwargs: Any) -> Shard:
    """The four sources of the phantom ``seed``, labelled by its truth."""
    from services.modeling.evaluation import froc
    from services.modeling.evaluation.evalcases import eval_case
    from services.modeling.evaluation.evaluate import score_case

    case = eval_case(seed, cache_dir=None, **case_kwargs)
    findings = stage_one(engine, case.volume)
    scan = score_case(case, findings).scan
    hits = froc.match(scan)
    scored = [n for n, t in enumerate(scan.truths) if froc.scored(t)]
    hit_set = {h for h in hits if h >= 0}
    rng = np.random.default_rng([seed, 77])
    centers: list[Sequence[float]] = [f.center_mm for f in findings]
    labels = [int(h >= 0) for h in hits]
    sources = [0] * len(findings)
    sizes = [scan.truths[h].diameter_mm if h >= 0 else 0.0 for h in hits]
    for n in scored:
        t = scan.truths[n]
        for _ in range(JITTERED_COPIES):
            step = rng.normal(size=3)
            step *= rng.uniform(0, t.diameter_mm / 6.0) / max(float(np.linalg.norm(step)), 1e-6)
            centers.append(tuple(np.asarray(t.center_mm) + step))
            labels.append(1)
            sources.append(1)
            sizes.append(t.diameter_mm)
    avoid = [(t.center_mm, t.diameter_mm / 2.0) for t in scan.truths]
    points, kinds = random_points(case.volume, rng, avoid)
    centers += points
    labels += [0] * len(points)
    sources += kinds
    sizes += [0.0] * len(points)
    return Shard(
        name=f"phantom-{seed}",
        patches=patches_at(case.volume, centers),
        labels=np.asarray(labels, dtype=np.int8),
        sources=np.asarray(sources, dtype=np.int8),
        truth_diameters=np.asarray(sizes, dtype=np.float32),
        nodules=len(scored),
        nodules_hit=sum(1 for n in scored if n in hit_set),
    )


def mine_real(engine: Any, name: str, volume: Volume, lesions: Sequence[dict[str, Any]]) -> Shard:
    """Negatives of a real series: candidates and tissue points away from every lesion."""
    findings = stage_one(engine, volume)
    avoid = [(les["center_mm"], les["diameter_mm"] / 2.0 + REAL_MARGIN_MM) for les in lesions]
    keep = [
        f.center_mm
        for f in findings
        if not any(np.linalg.norm(np.subtract(f.center_mm, c)) <= r for c, r in avoid)
    ]
    rng = np.random.default_rng(sum(name.encode()))
    points, kinds = random_points(volume, rng, avoid, tissue=64, border=32)
    centers = keep + points
    n = len(centers)
    return Shard(
        name=name,
        patches=patches_at(volume, centers),
        labels=np.zeros(n, dtype=np.int8),
        sources=np.asarray([0] * len(keep) + kinds, dtype=np.int8),
        truth_diameters=np.zeros(n, dtype=np.float32),
        nodules=0,
        nodules_hit=0,
    )


def mine(
    engine: Any,
    seeds: Sequence[int],
    out_dir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    **case_kwargs: Any,
) -> list[Path]:
    """Mine each phantom seed into ``out_dir/<seed>.npz``; seeds already there are kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, seed in enumerate(seeds):
        path = out_dir / f"{seed}.npz"
        if not path.exists():
            mine_phantom(engine, seed, **case_kwargs).save(path)
        paths.append(path)
        if progress is not None:
            progress(n + 1, len(seeds))
    return paths
