"""Aggregate evaluation outcomes into the metrics table (overall and by stratum)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from services.modeling.evaluation import froc

if TYPE_CHECKING:
    from services.modeling.evaluation.evaluate import NoduleOutcome, ScanOutcome

STRATA: dict[str, Callable[[dict[str, Any]], str]] = {
    "size": lambda a: froc.size_band(float(a["diameter_mm"])),
    "kind": lambda a: str(a["kind"]),
    "location": lambda a: str(a["location"]),
    "shape": lambda a: str(a.get("shape", "?")),
    "thickness": lambda a: str(a["thickness"]),
    "noise": lambda a: str(a.get("noise", "?")),
}
#: strata that describe the whole scan (its false positives count in that row only)
SCAN_STRATA = ("thickness", "noise")
#: rows of the size and thickness strata in ascending order; other strata sort by name
ROW_ORDER = (
    *(froc.UNSCORED_BAND, "3-6 mm", "6-8 mm", "8-15 mm", "15-30 mm"),
    *("<=1 mm", "1-2 mm", ">2 mm"),
    *("noise <=20 HU", "noise 20-60 HU", "noise >60 HU"),
)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _segmentation(nodules: Sequence[NoduleOutcome]) -> dict[str, Any]:
    hit = [n for n in nodules if n.hit_score is not None]
    return {
        "nodules": len(nodules),
        "detected_any_score": len(hit),
        "dice_mean": _nan_to_none(float(np.mean([n.dice for n in hit])) if hit else float("nan")),
        "diameter_mae_mm": _nan_to_none(froc.mae([n.diameter_error_mm or 0.0 for n in hit])),
        "diameter_bias_mm": _nan_to_none(
            float(np.mean([n.diameter_error_mm for n in hit])) if hit else float("nan")
        ),
        "volume_mae_mm3": _nan_to_none(froc.mae([n.volume_error_mm3 or 0.0 for n in hit])),
        "volume_mae_rel": _nan_to_none(froc.mae([n.volume_error_rel or 0.0 for n in hit])),
    }


def summarize(results: Sequence[ScanOutcome]) -> dict[str, Any]:
    """Overall metrics plus one row per stratum value.

    Nodules under 3 mm are not scored (see :mod:`services.modeling.evaluation.froc`): the overall
    figures leave them out and count them in ``nodules_under_3mm_not_scored``; the size
    strata show them in a row of their own, without sensitivities.
    """
    scans = [r.scan for r in results]
    everything = [n for r in results for n in r.nodules]
    nodules = [
        n for r in results for t, n in zip(r.scan.truths, r.nodules, strict=True) if froc.scored(t)
    ]
    curve = froc.froc(scans)
    fps = sum(h < 0 for s in scans for h in froc.match(s))
    ge6 = froc.froc(scans, [1.0], include=lambda t: t.diameter_mm >= 6.0)[0]
    inference = [r.seconds.get("inference", 0.0) for r in results]
    shown = [r.reported for r in results if r.reported is not None]
    at_point: dict[str, Any] = {}
    if len(shown) == len(results) and shown:
        hits = [froc.match(s) for s in shown]
        found = [
            {h for h in hit if h >= 0 and froc.scored(s.truths[h])}
            for s, hit in zip(shown, hits, strict=True)
        ]
        scored_all = sum(sum(froc.scored(t) for t in s.truths) for s in shown)
        in_reports = [
            (n in f)
            for s, f in zip(shown, found, strict=True)
            for n, t in enumerate(s.truths)
            if froc.scored(t) and t.diameter_mm >= 6.0
        ]
        at_point = {
            "sensitivity": round(sum(len(f) for f in found) / max(scored_all, 1), 4),
            "sensitivity_ge_6mm": (round(float(np.mean(in_reports)), 4) if in_reports else None),
            "false_positives_per_scan": round(
                sum(h < 0 for hit in hits for h in hit) / len(shown), 3
            ),
            "findings_per_scan": round(sum(len(s.detections) for s in shown) / len(shown), 3),
        }
    overall = {
        "scans": len(scans),
        "findings": sum(len(s.detections) for s in scans),
        "false_positives_per_scan": round(fps / max(len(scans), 1), 3),
        "froc": {str(rate): round(s, 4) for rate, s in zip(froc.FP_RATES, curve, strict=True)},
        "cpm": round(froc.cpm(curve), 4),
        "sensitivity_at_1fp_ge_6mm": _nan_to_none(ge6),
        **_segmentation(nodules),
        "nodules_under_3mm_not_scored": len(everything) - len(nodules),
        "inference_seconds_mean": round(float(np.mean(inference)), 2) if inference else None,
        "inference_seconds_max": round(float(np.max(inference)), 2) if inference else None,
        "at_operating_point": at_point,
    }
    strata: dict[str, list[dict[str, Any]]] = {}
    for name, key in STRATA.items():
        pool = everything if name == "size" else nodules
        values = sorted(
            {key(n.attrs) for n in pool},
            key=lambda v: (ROW_ORDER.index(v) if v in ROW_ORDER else len(ROW_ORDER), v),
        )
        rows = []
        for value in values:
            subset = scans
            if name in SCAN_STRATA:  # FPs per scan counted on those scans only
                subset = [s for s in scans if s.attrs.get(name) == value]

            def include(t: froc.TrueNodule, key: Any = key, value: str = value) -> bool:
                return bool(key(t.attrs) == value)

            sub_curve = froc.froc(subset, include=include)
            rows.append(
                {
                    "value": value,
                    "sensitivity_at_1fp": _nan_to_none(sub_curve[3]),
                    "cpm": _nan_to_none(froc.cpm(sub_curve)),
                    **_segmentation([n for n in pool if key(n.attrs) == value]),
                }
            )
        strata[name] = rows
    return {"overall": overall, "strata": strata}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_COLUMNS = (
    "nodules",
    "detected_any_score",
    "sensitivity_at_1fp",
    "cpm",
    "dice_mean",
    "diameter_mae_mm",
    "diameter_bias_mm",
    "volume_mae_rel",
)


def markdown(summary: dict[str, Any]) -> str:
    """The metrics as Markdown tables (for the model card)."""
    o = summary["overall"]
    lines = ["| metric | value |", "|---|---|"]
    for key, value in o.items():
        if key == "froc":
            for rate, sens in value.items():
                lines.append(f"| sensitivity at {rate} FP/scan | {_fmt(sens)} |")
        elif isinstance(value, dict):
            for sub, item in value.items():
                label = f"{key} {sub}".replace("_", " ")
                lines.append(f"| {label} | {_fmt(item)} |")
        else:
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(value)} |")
    for name, rows in summary["strata"].items():
        lines += [
            "",
            f"**By {name}**",
            "",
            "| " + name + " | " + " | ".join(c.replace("_", " ") for c in _COLUMNS) + " |",
            "|---" * (len(_COLUMNS) + 1) + "|",
        ]
        for row in rows:
            lines.append(
                "| " + row["value"] + " | " + " | ".join(_fmt(row[c]) for c in _COLUMNS) + " |"
            )
    return "\n".join(lines)


def render_text(summary: dict[str, Any]) -> str:
    """Plain-text report for the terminal."""
    return markdown(summary) + "\n\nreproduce: " + str(summary.get("command", ""))
