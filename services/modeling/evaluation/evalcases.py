"""Held-out evaluation phantoms, generated once per phantom version and cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.analysis.geometry import Volume

log = logging.getLogger(__name__)

#: default case cache (``noduleflow evaluate --cache-dir``, or ``NODULEFLOW_EVAL_CACHE``)
CACHE_DIR = Path("var/cache/eval")


@dataclass
class EvalCase:
    """A full phantom volume, its per-nodule truth masks (boxes) and acquisition facts."""

    seed: int
    volume: Volume
    nodules: list[dict[str, Any]]  # NoduleTruth.to_dict() + "origin" (k0, j0, i0)
    masks: list[NDArray[np.bool_]]
    thickness_mm: float

    def truth_box(self, index: int) -> tuple[NDArray[np.bool_], tuple[int, int, int]]:
        origin = self.nodules[index]["origin"]
        return self.masks[index], (int(origin[0]), int(origin[1]), int(origin[2]))


# The phantom generator package, whose source digest keys the cached cases.
PHANTOM_DIR = Path(__file__).resolve().parents[1] / "phantom"


def phantom_version(domain: str = "v1") -> str:
    """Digest of the phantom generator's source, with the domain unless v1: a new phantom
    or another domain means other cached cases."""
    digest = hashlib.sha256()
    for path in sorted(PHANTOM_DIR.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10] + ("" if domain == "v1" else f"-{domain}")


def from_phantom(case: Any, seed: int) -> EvalCase:
    labels = np.asarray(case.labels)
    nodules, masks = [], []
    for truth in case.nodules:
        where = np.nonzero(labels == truth.label)
        lo = [int(a.min()) for a in where]
        hi = [int(a.max()) + 1 for a in where]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        masks.append(labels[box] == truth.label)
        nodules.append({**truth.to_dict(), "origin": lo})
    return EvalCase(seed, case.volume, nodules, masks, float(case.meta.get("thickness", 0.0)))


def _save(case: EvalCase, path: Path) -> None:
    v = case.volume
    arrays: dict[str, Any] = {f"mask{n}": m for n, m in enumerate(case.masks)}
    meta = {
        "seed": case.seed,
        "nodules": case.nodules,
        "thickness_mm": case.thickness_mm,
        "spacing": v.spacing,
        "origin": v.origin,
        "row_dir": v.row_dir,
        "col_dir": v.col_dir,
        "slice_dir": v.slice_dir,
    }
    tmp = path.with_suffix(".tmp.npz")
    hu = np.clip(np.rint(v.hu), -32768, 32767).astype(np.int16)
    arrays["hu"] = hu
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _load(path: Path) -> EvalCase:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        volume = Volume(
            hu=data["hu"].astype(np.float32),
            spacing=tuple(meta["spacing"]),
            origin=tuple(meta["origin"]),
            row_dir=tuple(meta["row_dir"]),
            col_dir=tuple(meta["col_dir"]),
            slice_dir=tuple(meta["slice_dir"]),
        )
        masks = [data[f"mask{n}"] for n in range(len(meta["nodules"]))]
    return EvalCase(int(meta["seed"]), volume, meta["nodules"], masks, float(meta["thickness_mm"]))


def eval_case(seed: int, *, cache_dir: Path | None = CACHE_DIR, **kwargs: Any) -> EvalCase:
    """The held-out case of ``seed`` (``generate_case(seed, **kwargs)``), from cache if there."""
    from services.modeling.phantom import generate_case

    path = None
    if cache_dir is not None:
        rest = {k: v for k, v in kwargs.items() if k != "domain"}
        key = phantom_version(str(kwargs.get("domain", "v1"))) + (
            "-" + hashlib.sha256(repr(sorted(rest.items())).encode()).hexdigest()[:6]
            if rest
            else ""
        )
        path = cache_dir / key / f"{seed}.npz"
        if path.exists():
            return _load(path)
    case = from_phantom(generate_case(seed, **kwargs), seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(case, path)
    return case
