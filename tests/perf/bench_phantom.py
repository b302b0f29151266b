"""Phantom generation speed: CPU and wall seconds for full-size chest CT cases.

Run: ``.venv/bin/python tests/perf/bench_phantom.py [N_CASES]``. Prints, per case, the shape,
slice thickness, CPU and wall time and the per-stage wall split, then the mean CPU time per
512×512×300 case and its ratio to the anchor: the 5 s budget that lets a training run
generate hundreds of cases. CPU time is the fair number on a shared machine (wall time also
counts waiting for the processor).
"""

from __future__ import annotations

import os
import sys
import time

from services.modeling.phantom import generate_case

ANCHOR_S = 5.0


def main(n_cases: int = 3) -> None:
    cpu_per_300 = []
    for seed in range(1000, 1000 + n_cases):
        wall, cpu = time.perf_counter(), time.process_time()
        case = generate_case(seed, slices=300)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        cpu_per_300.append(cpu * 300 / case.volume.shape[0])
        print(
            f"seed={seed} shape={case.volume.shape} thickness={case.meta['thickness']} "
            f"cpu={cpu:.2f}s wall={wall:.2f}s stages={case.meta['timing_s']}"
        )
    mean = sum(cpu_per_300) / len(cpu_per_300)
    print(
        f"phantom 512x512x300 on {os.cpu_count()} cpus (load {os.getloadavg()[0]:.1f}): "
        f"mean cpu {mean:.2f}s per case, ratio to the {ANCHOR_S:.0f}s anchor "
        f"{mean / ANCHOR_S:.2f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
