"""Worker benchmark: studies per minute, seconds per stage, model FLOPs and achieved TFLOP/s.

    python tests/perf/bench_worker.py [--studies 4] [--slices 100] [--workers 1]
                                      [--model-dir models/nodule-seg] [--providers cpu]

A phantom chest CT (512×512, ``--slices`` slices of 1.25 mm, three 8–16 mm nodules) is
stored ``--studies`` times under new UIDs with a queued job each; ``--workers``
``noduleflow worker`` processes (RabbitMQ, PostgreSQL when reachable, else SQLite) are
started and ready before every StudyReady is published at once; the clock stops when the
last job is committed. Per-stage seconds are the means of the jobs' recorded timings.

Anchor: the analysis pipeline alone (``analyze_files`` in this process, warm, same study) —
the ratio says what the service around the model (database, broker, storage, commit)
costs. FLOPs come from ``Engine.flops``; TFLOP/s are given for the network alone (time
inside ONNX Runtime) and for the whole inference stage (resampling and blending included).
GPU providers (CUDA, TensorRT; fp32 and fp16) are measured in this process when ONNX
Runtime offers them; otherwise the GPU line says why not.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from services.core.broker import RabbitBroker, Topology, delete_topology  # noqa: E402
from services.core.db import Database  # noqa: E402
from services.core.outbox import Relay  # noqa: E402
from services.core.storage import LocalStorage  # noqa: E402
from tests.factories.worker import queue_job, store_files  # noqa: E402
from tests.integration.worker.harness import WorkerProc, clone_study  # noqa: E402
from tests.services import PG_ADMIN_URL, RABBIT_URL, port_open  # noqa: E402

# Dense peak TFLOP/s by GPU name fragment and precision (vendor data sheets, SXM parts).
GPU_PEAKS = {"H100": {"fp32": 67.0, "fp16": 989.0}, "H200": {"fp32": 67.0, "fp16": 989.0}}
STAGES = ("load", "read", "assemble", "crop", "inference", "postprocess", "total")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def timed_engine(engine: Any) -> list[float]:
    """Wrap ``engine._run`` (once) to record the seconds spent inside ONNX Runtime per tile."""
    if hasattr(engine, "bench_spent"):
        return engine.bench_spent  # type: ignore[no-any-return]
    spent: list[float] = []
    engine.bench_spent = spent
    run = engine._run

    def wrapped(patch: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(patch)
        finally:
            spent.append(time.perf_counter() - started)

    engine._run = wrapped
    return spent


def heap_as_in_the_worker() -> bool:
    """This process's malloc set as the worker's (``NODULEFLOW_WORKER_KEEP_MEMORY``, on by
    default; ``core/heap.py``), so that the pipeline alone is timed as the worker runs it:
    kept memory alone makes an analysis some 11 % faster. Call it first, before threads."""
    from services.core import heap
    from services.core.settings import Settings

    return heap.configure(Settings())


def pipeline_alone(
    engine: Any, files: list[Path], repeats: int = 2, *, warm_up: bool = True
) -> dict[str, Any]:
    """The anchor: ``analyze_files`` in this process (first run warms up, then timed)."""
    from services.analysis.pipeline import analyze_files

    spent = timed_engine(engine)
    if warm_up:
        analyze_files(files, engine)
    seconds, network, stages = [], [], []
    for _ in range(repeats):
        spent.clear()
        started = time.perf_counter()
        result = analyze_files(files, engine)
        seconds.append(time.perf_counter() - started)
        network.append(sum(spent))
        stages.append(result.timings)
    geometry = result.geometry
    return {
        "seconds": mean(seconds),
        "network": mean(network),
        "inference": mean(s["inference"] for s in stages),
        "flops": engine.flops(geometry.shape, geometry.spacing),
        "shape": geometry.shape,
        "findings": len(result.findings),
    }


def make_database() -> tuple[str, Any]:
    """A fresh PostgreSQL database (dropped by the returned cleanup), else a SQLite file."""
    if port_open("127.0.0.1", 5432):
        name = f"nfbench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=:n"),
                    {"n": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            admin.dispose()

        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop
    return f"sqlite:///{tempfile.mkdtemp(prefix='nfbench-')}/bench.db", lambda: None


def run_workers(args: argparse.Namespace, files: list[Path], work: Path) -> dict[str, Any]:
    """Studies per minute and mean per-stage seconds of ``noduleflow worker`` processes."""
    url, drop = make_database()
    prefix = f"nfbench.{uuid.uuid4().hex[:8]}"
    db = Database(url)
    db.upgrade()
    broker = RabbitBroker(RABBIT_URL, Topology(prefix=prefix))
    broker.declare()
    storage = LocalStorage(work / "storage")
    procs: list[WorkerProc] = []
    try:
        jobs = []
        for n in range(args.studies):
            study_uid, series = store_files(db, storage, clone_study(files, work / f"s{n}"))
            jobs.append(queue_job(db, study_uid, series, outbox=True).job_id)
        env = {
            "NODULEFLOW_DATABASE_URL": url,
            "NODULEFLOW_BROKER_URL": RABBIT_URL,
            "NODULEFLOW_BROKER_PREFIX": prefix,
            "NODULEFLOW_STORAGE_DIR": str(work / "storage"),
            "NODULEFLOW_MODEL_DIR": str(args.model_dir),
            "NODULEFLOW_PROVIDERS": args.providers,
        }
        for n in range(args.workers):
            procs.append(WorkerProc(f"worker{n}", env, work / f"worker{n}.log"))
        for proc in procs:
            proc.wait_log("event=consuming", timeout=120)
        started = time.perf_counter()
        Relay(db, broker).relay_once()
        rows = wait_all(db, jobs, procs, timeout=args.timeout)
        elapsed = time.perf_counter() - started
        failed = [r for r in rows if r["state"] != "reporting"]
        if failed:
            raise SystemExit(f"{len(failed)} jobs did not complete: {failed[0]['reason']}")
        return {
            "elapsed": elapsed,
            "per_minute": 60.0 * len(jobs) / elapsed,
            "stages": {s: mean(float(r["timings"].get(s, 0.0)) for r in rows) for s in STAGES},
            "findings": mean(int(r["findings"] or 0) for r in rows),
        }
    finally:
        for proc in procs:
            proc.kill()
        broker.close()
        delete_queues(prefix)
        db.dispose()
        drop()


def wait_all(db: Database, jobs: list[str], procs: list[WorkerProc], timeout: float) -> list[Any]:
    from services.core.db import Job

    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            rows = [
                {
                    "state": j.state,
                    "reason": j.reason,
                    "timings": j.timings,
                    "findings": j.findings_count,
                }
                for j in (session.get(Job, job_id) for job_id in jobs)
                if j is not None
            ]
        if all(r["state"] in ("reporting", "failed", "skipped") for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise SystemExit("timed out\n" + "\n".join(p.tail() for p in procs))
        time.sleep(0.1)


def delete_queues(prefix: str) -> None:
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        channel = conn.channel()
        delete_topology(channel, Topology(prefix=prefix))
        conn.close()
    except Exception as exc:
        print(f"(queue clean-up failed: {exc})")


def gpu_section(args: argparse.Namespace, files: list[Path]) -> None:
    import onnxruntime as ort

    from services.analysis.engine import Engine

    available = ort.get_available_providers()
    gpu = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    if not gpu:
        print(f"GPU: not measured: no GPU (ONNX Runtime providers: {', '.join(available)})")
        return
    name = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "unknown GPU"
    )
    peaks = next((v for k, v in GPU_PEAKS.items() if k in name), {})
    for provider in gpu:
        short = "tensorrt" if provider.startswith("Tensorrt") else "cuda"
        for precision in ("fp32", "fp16"):
            try:
                engine = Engine.load(args.model_dir, short, precision=precision)
            except Exception as exc:
                print(f"GPU {name} {short} {precision}: not measured ({exc})")
                continue
            anchor = pipeline_alone(engine, files, repeats=3)
            tflops = anchor["flops"] / anchor["network"] / 1e12
            peak = peaks.get(precision)
            share = f", {100 * tflops / peak:.1f} % of {peak:.0f} peak" if peak else ""
            print(
                f"GPU {name} {short} {precision}: {anchor['seconds']:.2f} s/study "
                f"({60 / anchor['seconds']:.1f}/min), network {anchor['network']:.3f} s, "
                f"{tflops:.2f} TFLOP/s{share}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "nodule-seg")
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if not (args.model_dir / "model.json").is_file():
        raise SystemExit(f"no model at {args.model_dir}")
    heap_as_in_the_worker()
    if not port_open("127.0.0.1", 5672):
        raise SystemExit("RabbitMQ on 127.0.0.1:5672 is needed")
    import onnxruntime as ort

    from services.analysis.engine import Engine
    from services.modeling.phantom import write_phantom

    with tempfile.TemporaryDirectory(prefix="nfbench-") as tmp:
        work = Path(tmp)
        phantom = write_phantom(
            work / "phantom",
            seed=args.seed,
            nodules=3,
            slices=args.slices,
            thickness=1.25,
            min_diameter_mm=8.0,
            max_diameter_mm=16.0,
        )
        files = list(phantom.files)
        cores = len(os.sched_getaffinity(0))
        engine = Engine.load(args.model_dir, args.providers)
        print(
            f"machine: {cpu_name()}, {cores} cores, Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__}"
        )
        print(
            f"model: {engine.manifest.name} {engine.manifest.version} on {engine.provider} "
            f"({engine.precision}); study: phantom seed {args.seed}, {len(files)} slices 512x512"
        )
        anchor = pipeline_alone(engine, files)
        served = run_workers(args, files, work)
        after = pipeline_alone(
            engine, files, repeats=1, warm_up=False
        )  # the machine may be shared: recheck
    spread = abs(anchor["seconds"] - after["seconds"]) / anchor["seconds"]
    anchor["seconds"] = (anchor["seconds"] + after["seconds"]) / 2
    flops = anchor["flops"]
    print(f"model FLOPs per study: {flops / 1e9:.1f} GFLOP (volume {anchor['shape']})")
    print(
        f"CPU network time {anchor['network']:.2f} s → {flops / anchor['network'] / 1e12:.4f} "
        f"TFLOP/s; inference stage {anchor['inference']:.2f} s → "
        f"{flops / anchor['inference'] / 1e12:.4f} TFLOP/s; peak: unknown for this CPU"
    )
    print(
        f"anchor, pipeline alone: {anchor['seconds']:.2f} s/study "
        f"({60 / anchor['seconds']:.2f}/min; before/after the worker run differ by "
        f"{100 * spread:.0f} %), {anchor['findings']} findings"
    )
    print(
        f"worker service: {args.studies} studies, {args.workers} worker process(es): "
        f"{served['elapsed']:.1f} s → {served['per_minute']:.2f} studies/min "
        f"(ratio to the anchor: {served['per_minute'] * anchor['seconds'] / 60:.2f})"
    )
    print("per-stage mean seconds: " + ", ".join(f"{s}={served['stages'][s]:.2f}" for s in STAGES))
    gpu_section(args, files)


if __name__ == "__main__":
    main()
