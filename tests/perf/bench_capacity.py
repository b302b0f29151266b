"""How wide a stage-one U-Net the inference budget allows, timed per 128³ tile on the CPU.

Run: ``.venv/bin/python tests/perf/bench_capacity.py [--widths 6,8,10,12,16] [--repeat 3]``
(needs the training extra: torch exports each network). Each width ``w`` is a
``UNet3D((w, 2w, 4w, 8w))`` with random weights (the time does not depend on them),
exported to ONNX like the shipped model and run with the engine's CPU settings (one
intra-op thread per core, no spinning). Prints parameters, GFLOP and seconds per tile (best
of ``--repeat``), the ratio to the shipped width 6 (the anchor, same run) and the stage-one
seconds that ratio implies for a 300-slice study, given the shipped network's measured
``--study-seconds`` (default 10.9 s: ``bench_turnaround``'s inference stage).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

TILE = 128
SHIPPED_WIDTH = 6
BUDGET_S = 30.0  # both stages, 300 slices, 2 CPU cores


def seconds_per_tile(width: int, repeat: int) -> tuple[int, float]:
    """(parameters, best seconds) of one ``TILE``³ tile through a width-``width`` U-Net."""
    import onnxruntime as ort

    from services.modeling.training.export import to_onnx
    from services.modeling.training.network import UNet3D

    net = UNet3D((width, 2 * width, 4 * width, 8 * width)).eval()
    parameters = sum(p.numel() for p in net.parameters())
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        to_onnx(net).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 1, TILE, TILE, TILE)).astype(np.float32)
    session.run(None, {name: x})  # warm-up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        runs.append(time.perf_counter() - t0)
    return parameters, min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="6,8,10,12,16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--study-seconds", type=float, default=10.9)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if SHIPPED_WIDTH not in widths:
        widths.insert(0, SHIPPED_WIDTH)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"cores {len(os.sched_getaffinity(0))}, load {' '.join(load)}, tile {TILE}³")
    results = {w: seconds_per_tile(w, args.repeat) for w in widths}
    anchor = results[SHIPPED_WIDTH][1]
    print("| width | channels | parameters | s per tile | vs shipped (6) | stage one, 300 slices |")
    print("|---:|---|---:|---:|---:|---:|")
    for w, (parameters, seconds) in results.items():
        ratio = seconds / anchor
        channels = f"{w}-{2 * w}-{4 * w}-{8 * w}"
        study = ratio * args.study_seconds
        print(
            f"| {w} | {channels} | {parameters:,} | {seconds:.2f} | {ratio:.2f}× | {study:.1f} s |"
        )
    print(f"budget: {BUDGET_S:.0f} s for both stages and everything else, 300 slices")


if __name__ == "__main__":
    main()
