"""``noduleflow fpr …``: mine, train and fit the second stage (needs the ``train`` extra)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _logging() -> None:
    from services.core.logs import setup_logging

    if not logging.getLogger().handlers:
        setup_logging("INFO", service="fpr")


#: phantom seeds of the second stage: training (never validation or held out), validation
TRAIN_SEEDS = range(60000, 61000)
VAL_SEEDS = range(50000, 50060)


def mine_command(
    model_dir: Path,
    out: Path,
    first: int,
    count: int,
    domain: str | None,
    real: Sequence[Path],
) -> None:
    _logging()
    from services.analysis.engine import Engine
    from services.modeling.fpr.mine import mine, mine_real

    engine = Engine.load(model_dir, "cpu")
    kwargs: dict[str, Any] = {} if domain is None else {"domain": domain}
    mine(
        engine,
        range(first, first + count),
        out,
        progress=lambda n, total: log.info("event=fpr_mined done=%d/%d", n, total),
        **kwargs,
    )
    for folder in real:
        volume, lesions = read_real_series(folder)
        path = out / f"real-{folder.name}.npz"
        if not path.exists():
            mine_real(engine, folder.name, volume, lesions).save(path)


def read_real_series(folder: Path) -> tuple[Any, list[dict[str, Any]]]:
    """A real series folder (DICOM files + ``truth.json``) as a volume and its lesions.

    The series is assembled whatever its slice thickness: mining negatives from a series
    the pipeline would refuse (8 mm slices) is still anatomy worth learning from.
    """
    from services.analysis import series
    from services.analysis.dicom_io import read_headers
    from services.analysis.volume import assemble

    headers, _ = read_headers(sorted(p for p in folder.iterdir() if p.name != "truth.json"))
    saved = series.MAX_SLICE_SPACING_MM
    series.MAX_SLICE_SPACING_MM = 10.0  # training tool only: thick slices are anatomy too
    try:
        plan = series.choose_series(headers)
    finally:
        series.MAX_SLICE_SPACING_MM = saved
    volume = assemble(plan)
    truth = json.loads((folder / "truth.json").read_text())
    return volume, list(truth["nodules"])


def train_command(
    shards: Sequence[Path],
    checkpoint: Path,
    minutes: float,
    threads: int,
    device: str,
    exclude: Sequence[str],
) -> None:
    _logging()
    from services.modeling.fpr.train import Samples, train

    paths = [p for d in shards for p in sorted(d.glob("*.npz"))]
    paths = [p for p in paths if not any(x in p.name for x in exclude)]
    samples = Samples.load(paths)
    log.info("event=fpr_samples scans=%d samples=%d", len(samples.names), len(samples.labels))
    train(samples, checkpoint, minutes=minutes, threads=threads, device=device)


def fit_command(
    checkpoint: Path, val: Path, model_dir: Path, masses: str | None, fp_per_scan: float
) -> None:
    _logging()
    import onnxruntime as ort

    from services.analysis.stage2 import Calibration, Stage2
    from services.modeling.fpr.fit import fit, install
    from services.modeling.fpr.mine import Shard
    from services.modeling.fpr.train import load_checkpoint, to_onnx

    onnx_bytes = to_onnx(load_checkpoint(checkpoint))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    stage2 = Stage2(session, Calibration())  # the pipeline's own batching; raw logits

    shards = [Shard.load(p) for p in sorted(val.glob("*.npz"))]
    fitted = fit(stage2.logits, shards, per_scan=fp_per_scan)
    version = install(
        model_dir, onnx_bytes, fitted, masses=None if masses is None else json.loads(masses)
    )
    print(json.dumps({"version": version, **fitted.metrics}, indent=1))
