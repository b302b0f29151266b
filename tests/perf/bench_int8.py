"""Stage one in fp32 and ONNX Runtime INT8 static quantization, tile by tile, on the CPU.

Run: ``.venv/bin/python tests/perf/bench_int8.py [--model-dir DIR] [--format qdq|qoperator]``.
Quantizes ``model.onnx`` (per-channel int8 weights, uint8 activations) with six 128³ tiles
of a validation phantom (wide seed 51001, never a held-out seed) as calibration data, then
times both sessions alternately on two other tiles and prints seconds per tile, the ratio
int8 / fp32 (the anchor: fp32 in the same run) and the largest probability difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 128


def tiles_of(seed: int, count: int) -> list[np.ndarray]:
    from services.analysis import preprocess
    from services.analysis.lungs import CROP_MARGIN_MM, lung_mask
    from services.modeling.phantom import generate_case

    volume = generate_case(seed, domain="wide").volume
    box = lung_mask(volume.hu, volume.spacing).crop(CROP_MARGIN_MM, volume.spacing)
    x = preprocess.model_input(volume.hu[box], volume.spacing, (1.25, 1.0, 1.0), (-1000.0, 400.0))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        lo = [int(rng.integers(0, max(1, s - TILE))) for s in x.shape]
        t = x[lo[0] : lo[0] + TILE, lo[1] : lo[1] + TILE, lo[2] : lo[2] + TILE]
        t = np.pad(t, [(0, TILE - a) for a in t.shape], constant_values=-1.0)
        out.append(t[None, None].astype(np.float32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models/nodule-seg"))
    parser.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tiles = tiles_of(51001, 8)
    calibration, timed = tiles[:6], tiles[6:]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tile = next(self.left, None)
            return None if tile is None else {"x": tile}

    src = str((args.model_dir / "model.onnx").resolve())
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the quantization tools leave scratch files in the working folder
        pre, int8 = f"{tmp}/pre.onnx", f"{tmp}/int8.onnx"
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            int8,
            Reader(),
            quant_format=QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        fp32 = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        q8 = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
        t32, t8, diff = [], [], 0.0
        for tile in timed * 2:
            t0 = time.perf_counter()
            a = fp32.run(None, {"x": tile})[0]
            t1 = time.perf_counter()
            b = q8.run(None, {"x": tile})[0]
            t2 = time.perf_counter()
            t32.append(t1 - t0)
            t8.append(t2 - t1)
            diff = max(diff, float(np.abs(1 / (1 + np.exp(-a)) - 1 / (1 + np.exp(-b))).max()))
        os.chdir(here)
    s32, s8 = statistics.median(t32), statistics.median(t8)
    print(f"fp32 (anchor): {s32:.2f} s per {TILE}³ tile")
    print(f"int8 {args.format}: {s8:.2f} s per tile, {s8 / s32:.2f}× fp32")
    print(f"largest probability difference: {diff:.3f}")


if __name__ == "__main__":
    main()
