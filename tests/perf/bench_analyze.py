"""Per-stage time of the analysis pipeline on a 300-slice 512×512 phantom study.

Run: ``.venv/bin/python tests/perf/bench_analyze.py [--workdir DIR] [--slices 300]``

Writes the phantom once (``write_phantom``; reused when ``--workdir`` already holds it),
then times ``analyze_files`` (read, assemble, crop, stage-one inference, second stage, mass
pass, postprocess) with ONNX Runtime's own CPU kernels and prints the total against the
anchor: ≤ 30 s per study on 2 CPU cores. When ONNX Runtime offers the OpenVINO provider (the
``onnxruntime-openvino`` build), the study is timed on it too, with its ratio to the CPU
kernels' run, the CPU seconds each used and whether their findings agree. Malloc is set
as in the worker (``NODULEFLOW_WORKER_KEEP_MEMORY``, ``core/heap.py``). When
ONNX Runtime offers CUDA or TensorRT, the same study is timed on each; otherwise GPU
figures are reported as not measured. Without a model in ``--model-dir`` the inference
stage is replaced by a stand-in that returns zeros and reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.analysis.command import folder_files
from services.analysis.config import AnalysisConfig
from services.analysis.pipeline import AnalysisResult, analyze_files
from tests.perf.bench_worker import heap_as_in_the_worker

ANCHOR_S = 30.0
STAGES = (
    "read",
    "assemble",
    "crop",
    "inference",
    "second_stage",
    "mass_pass",
    "postprocess",
)


class ZeroModel:
    """Stand-in when no model is available: probability 0 everywhere."""

    name, version, provider = "none", "-", "none"
    config = AnalysisConfig(threshold=0.5)

    def lane(self) -> AbstractContextManager[int | None]:
        return nullcontext()

    def probability(self, hu: Any, spacing: Any, *, progress: Any = None) -> np.ndarray:
        return np.zeros(hu.shape, dtype=np.float32)


def phantom(
    workdir: Path, seed: int, slices: int
) -> tuple[list[Path], list[dict[str, Any]], float]:
    truth_path = workdir / "truth.json"
    started = time.perf_counter()
    if not truth_path.is_file():
        from services.modeling.phantom import write_phantom

        write_phantom(workdir, seed=seed, slices=slices)
    elapsed = time.perf_counter() - started
    truth = json.loads(truth_path.read_text())
    files = folder_files(workdir)
    nodules = truth.get("nodules", []) if isinstance(truth, dict) else []
    return files, nodules, elapsed


def run(files: list[Path], engine: Any) -> tuple[AnalysisResult, float]:
    started = time.perf_counter()
    result = analyze_files(files, engine)
    return result, time.perf_counter() - started


def report(label: str, result: AnalysisResult, total: float, measured_inference: bool) -> None:
    print(
        f"\n== {label}: model {result.model['name']} {result.model['version']}, "
        f"provider {result.provider}"
    )
    for stage in STAGES:
        seconds = result.timings.get(stage, 0.0)
        note = "" if stage != "inference" or measured_inference else "  (not measured: no model)"
        print(f"  {stage:<12} {seconds:7.2f} s{note}")
    print(
        f"  {'total':<12} {total:7.2f} s   ratio to the {ANCHOR_S:.0f} s anchor: "
        f"{total / ANCHOR_S:.2f}"
    )
    shape = result.geometry.shape
    print(
        f"  volume {shape} spacing {tuple(round(s, 3) for s in result.geometry.spacing)}; "
        f"{len(result.findings)} findings"
    )


def matched(result: AnalysisResult, nodules: list[dict[str, Any]]) -> int:
    hits = 0
    for nodule in nodules:
        centre = np.asarray(nodule["center_mm"], dtype=float)
        radius = max(3.0, float(nodule.get("diameter_mm", 6.0)) / 2)
        if any(np.linalg.norm(np.subtract(f.center_mm, centre)) <= radius for f in result.findings):
            hits += 1
    return hits


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def findings_key(result: AnalysisResult) -> list[tuple[Any, ...]]:
    return [
        (f.finding_type, f.kind, round(f.diameter_mm, 2), round(f.confidence, 4), f.bbox)
        for f in result.findings
    ]


def compare_openvino(files: list[Path], args: argparse.Namespace, cpu: Any, repeat: int) -> None:
    """The same study on the OpenVINO provider and on the CPU kernels, runs interleaved."""
    from services.analysis.engine import Engine

    engine = Engine.load(args.model_dir, providers="openvino")
    run(files, engine)  # warm-up: OpenVINO compiles the network for the first tile shapes
    for n in range(repeat):
        figures = {}
        for name, each in (("CPU kernels", cpu), ("OpenVINO", engine)):
            before = cpu_seconds()
            result, total = run(files, each)
            figures[name] = (result, total, cpu_seconds() - before)
        result, total, used = figures["OpenVINO"]
        base, base_total, base_used = figures["CPU kernels"]
        report(f"OpenVINO run {n + 1}", result, total, True)
        same = "the same" if findings_key(result) == findings_key(base) else "DIFFERENT"
        print(
            f"  vs the CPU kernels in the same round: {total:.2f} s against {base_total:.2f} s "
            f"({base_total / total:.2f}x faster; stage one {base.timings['inference']:.2f} -> "
            f"{result.timings['inference']:.2f} s), CPU {used:.1f} s against {base_used:.1f} s; "
            f"findings {same}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--model-dir", type=Path, default=Path("models/nodule-seg"))
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per provider")
    args = parser.parse_args()
    heap_as_in_the_worker()  # malloc as the worker runs the pipeline
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {cpus} CPU cores "
        f"available, load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}"
    )
    files, nodules, gen_s = phantom(workdir, args.seed, args.slices)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    print(
        f"study: {len(files)} files, {size_mb:.0f} MB in {workdir} "
        f"({f'written in {gen_s:.0f} s' if gen_s > 1 else 'reused'}); "
        f"{len(nodules)} true nodules; files are in the page cache (warm read)"
    )

    import onnxruntime as ort

    from services.analysis.engine import Engine, ModelError

    available = ort.get_available_providers()
    print(f"ONNX Runtime {ort.__version__}, providers: {', '.join(available)}")
    try:
        cpu_engine: Any = Engine.load(args.model_dir, providers="cpu")
        have_model = True
    except ModelError as exc:
        print(f"model: not loaded ({exc}); inference NOT measured, other stages are")
        cpu_engine, have_model = ZeroModel(), False
    for n in range(args.repeat):
        result, total = run(files, cpu_engine)
        report(f"CPU run {n + 1}", result, total, have_model)
        if have_model and nodules:
            print(f"  true nodules matched by a finding: {matched(result, nodules)}/{len(nodules)}")
    if have_model and "OpenVINOExecutionProvider" in available:
        compare_openvino(files, args, cpu_engine, args.repeat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS of this process so far: {peak:.0f} MB")
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not gpu or not have_model:
        why = "no CUDA/TensorRT provider in this ONNX Runtime" if not gpu else "no model"
        print(f"\nGPU: not measured ({why})")
        return 0
    for provider in gpu:
        name = "tensorrt" if provider.startswith("Tensorrt") else "cuda"
        try:
            engine = Engine.load(args.model_dir, providers=name)
        except ModelError as exc:
            print(f"\nGPU {name}: not measured ({exc})")
            continue
        run(files, engine)  # warm-up: CUDA context, TensorRT engine build
        result, total = run(files, engine)
        report(f"GPU {name} (after one warm-up run)", result, total, True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
