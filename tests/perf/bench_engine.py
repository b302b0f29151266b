"""Inference engine alone on a lung-cropped 300-slice 512×512 phantom.

Run: ``.venv/bin/python tests/perf/bench_engine.py [--model-dir DIR] [--providers cpu]``.
Prints the crop and model-grid shapes, tiles, network FLOPs, the seconds of
``Engine.probability`` (best and median of ``--repeat`` runs after one warm-up) and the ratio
to the anchor: 15 s, the inference share of the 30 s whole-study budget on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ANCHOR_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models/nodule-seg"))
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=100000)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from services.analysis.engine import Engine
    from services.analysis.lungs import CROP_MARGIN_MM, lung_mask
    from services.analysis.preprocess import grid_shape
    from services.analysis.tiling import plan
    from services.modeling.phantom import generate_case

    case = generate_case(args.seed, slices=args.slices, thickness=1.0)
    volume = case.volume
    box = lung_mask(volume.hu, volume.spacing).crop(CROP_MARGIN_MM, volume.spacing)
    crop = np.ascontiguousarray(volume.hu[box])
    engine = Engine.load(args.model_dir, args.providers, precision=args.precision)
    m = engine.manifest
    model_shape = grid_shape(crop.shape, volume.spacing, m.spacing_mm)
    tile, corners = plan(model_shape, m.patch_size, m.overlap, m.multiple)
    flops = engine.flops(crop.shape, volume.spacing)
    engine.probability(crop, volume.spacing)  # warm-up
    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        engine.probability(crop, volume.spacing)
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    cpus = len(os.sched_getaffinity(0))
    print(
        f"model {m.name} {m.version} ({engine.precision}) on {engine.provider}, "
        f"{cpus} CPU cores, {platform.processor() or platform.machine()}"
    )
    print(
        f"volume {volume.shape} spacing {tuple(round(s, 3) for s in volume.spacing)} → "
        f"lung crop {crop.shape} → model grid {model_shape}, {len(corners)} tiles of {tile}"
    )
    print(
        f"network {flops / 1e9:.1f} GFLOP; probability best {best:.2f} s, median "
        f"{statistics.median(runs):.2f} s over {len(runs)} runs "
        f"({flops / best / 1e9:.1f} GFLOP/s)"
    )
    print(f"ratio to the {ANCHOR_S:.0f} s inference anchor: {best / ANCHOR_S:.2f}")


if __name__ == "__main__":
    main()
