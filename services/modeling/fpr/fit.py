"""Calibrate the second stage on validation candidates and install it into a model folder.

The calibration (Platt scaling of the network's logit) and the operating point are fitted
on stage one's candidates of validation phantoms only — the candidates the pipeline will
really score — never on the random points used in training. The operating point is the
smallest calibrated probability at which the validation scans keep at most
``FP_PER_SCAN`` false positives per scan.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.analysis.stage2 import Calibration, expected_calibration_error, fit_platt
from services.modeling.fpr.mine import CANDIDATE_THRESHOLD, Shard

log = logging.getLogger(__name__)

FP_PER_SCAN = 1.0
FILE_NAME = "stage2.onnx"


@dataclass
class Fitted:
    calibration: Calibration
    report_min_confidence: float
    metrics: dict[str, Any]


def candidate_logits(logits_of: Any, shards: Sequence[Shard]) -> tuple[NDArray[np.float64], ...]:
    """Logits and labels of stage one's candidates (source 0), and their scan index."""
    logits, labels, scans = [], [], []
    for n, shard in enumerate(shards):
        pick = shard.sources == 0
        if not pick.any():
            continue
        logits.append(np.asarray(logits_of(shard.patches[pick].astype(np.float32)), np.float64))
        labels.append(shard.labels[pick].astype(np.float64))
        scans.append(np.full(int(pick.sum()), n, dtype=np.float64))
    if not logits:
        raise ValueError("no stage-one candidates in the validation shards")
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(scans)


def operating_point(
    probabilities: NDArray[np.float64], labels: NDArray[np.float64], scans: int, per_scan: float
) -> float:
    """Lowest probability keeping at most ``per_scan`` false positives per scan."""
    fps = np.sort(probabilities[labels == 0])[::-1]
    allowed = int(per_scan * scans)
    if allowed >= len(fps):
        return 0.0
    return round(float(fps[allowed]) + 1e-4, 4)


def fit(logits_of: Any, shards: Sequence[Shard], per_scan: float = FP_PER_SCAN) -> Fitted:
    """Calibration, operating point and validation figures of a trained network."""
    logits, labels, _ = candidate_logits(logits_of, shards)
    calibration = fit_platt(logits.tolist(), labels.astype(int).tolist())
    probabilities = calibration(logits)
    ece, table = expected_calibration_error(probabilities.tolist(), labels.astype(int).tolist())
    floor = operating_point(probabilities, labels, len(shards), per_scan)
    kept = probabilities >= floor
    nodules = sum(s.nodules for s in shards)
    metrics = {
        "validation_scans": len(shards),
        "validation_candidates": len(labels),
        "validation_true_candidates": int(labels.sum()),
        "stage_one_recall": round(sum(s.nodules_hit for s in shards) / max(nodules, 1), 4),
        "ece": round(float(ece), 4),
        "reliability": [
            {"bin_lo": lo, "mean_p": round(p, 4), "observed": round(o, 4), "n": c}
            for lo, p, o, c in table
        ],
        "fp_per_scan_at_operating_point": round(
            float(((labels == 0) & kept).sum()) / max(len(shards), 1), 3
        ),
        "true_candidates_kept": round(float(kept[labels == 1].mean()), 4) if labels.any() else 0,
    }
    return Fitted(calibration, floor, metrics)


def stage2_tag(data: dict[str, Any]) -> str:
    """8 hex digits of everything after stage one that changes what is reported: the second
    stage's network and calibration, its operating point, the mass pass, the denoised pass."""
    parts = [
        data["stage2"]["file"]["sha256"],
        data["stage2"]["calibration"],
        data["stage2"]["report_min_confidence"],
        data.get("masses"),
        data.get("denoise_pass", False),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]


def install(
    model_dir: Path, onnx_bytes: bytes, fitted: Fitted, *, masses: dict[str, Any] | None
) -> str:
    """Write the network into ``model_dir`` and its section into ``model.json``.

    The model version gets a ``.s`` tag: 8 hex digits of the network and its fitted
    parameters, so reports name the exact second stage that scored them. Returns it.
    """
    from services.analysis.manifest import ModelManifest

    path = model_dir / FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(onnx_bytes)
    tmp.replace(path)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    manifest_path = model_dir / "model.json"
    data = json.loads(manifest_path.read_text())
    data["stage2"] = {
        "file": {"path": FILE_NAME, "sha256": digest, "bytes": len(onnx_bytes)},
        "candidate_threshold": CANDIDATE_THRESHOLD,
        "calibration": fitted.calibration.to_dict(),
        "report_min_confidence": fitted.report_min_confidence,
        "metrics": fitted.metrics,
    }
    if masses is not None:
        data["masses"] = masses
    tag = stage2_tag(data)
    base = str(data["version"]).split(".s", 1)[0]
    data["version"] = f"{base}.s{tag}"
    ModelManifest.model_validate(data)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(manifest_path)
    log.info("event=stage2_installed version=%s", data["version"])
    return str(data["version"])
