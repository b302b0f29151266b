"""Ingest benchmark: one CT study sent by DCMTK storescu to noduleflow, storescp and Orthanc.

    python tests/perf/bench_ingest.py [--slices 300] [--size 512] [--processes 0]

For 1 and 4 associations (4 = the files split across 4 parallel storescu processes), each
receiver starts fresh (empty storage and index), receives the whole study, and is checked
for every instance; each case runs ``--repeat`` times and the median is kept. Prints
images/s and MB/s and the ratios to Orthanc and to storescp.
noduleflow runs as ``noduleflow receiver`` (multi-process, SQLite, fsync per instance);
storescp with ``--fork`` and a 128 KiB PDU (no fsync); Orthanc with its SQLite index.
Every DCMTK process gets ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.factories import write_ct_series  # noqa: E402
from tests.orthanc import running_orthanc  # noqa: E402
from tests.services import free_port, wait_port  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Target:
    name: str
    aet: str
    port: int
    count: Callable[[], int]


@dataclass
class Result:
    target: str
    associations: int
    seconds: float
    images: int
    megabytes: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def _echo(port: int, aet: str) -> bool:
    result = subprocess.run(
        ["echoscu", "-aec", aet, "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0


def _wait_echo(port: int, aet: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _echo(port, aet):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{aet} on port {port} did not answer C-ECHO")


@contextmanager
def noduleflow(workdir: Path, processes: int) -> Iterator[Target]:
    port = free_port()
    db_path = workdir / "noduleflow.db"
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": f"sqlite:///{db_path}",
        "NODULEFLOW_STORAGE_DIR": str(workdir / "storage"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_BROKER_URL": "",
        "NODULEFLOW_LOG_LEVEL": "WARNING",
        "NODULEFLOW_STUDY_IDLE_SECONDS": "60",
    }
    if processes:
        env["NODULEFLOW_RECEIVER_PROCESSES"] = str(processes)
    log = open(workdir / "receiver.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "receiver"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )

    def count() -> int:
        with sqlite3.connect(db_path) as conn:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])

    try:
        _wait_echo(port, "NODULEFLOW")
        yield Target("noduleflow", "NODULEFLOW", port, count)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@contextmanager
def storescp(workdir: Path) -> Iterator[Target]:
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "--fork", "-pdu", "131072", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port)
        _wait_echo(port, "ANY-SCP")
        yield Target("storescp", "ANY-SCP", port, lambda: len(list(out.iterdir())))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def orthanc(workdir: Path) -> Iterator[Target]:
    with running_orthanc(workdir / "orthanc") as server:
        _wait_echo(server.dicom_port, server.aet)
        yield Target("orthanc", server.aet, server.dicom_port, server.instance_count)


def send(target: Target, files: list[Path], associations: int) -> float:
    """Seconds from the first storescu start to the last storescu exit."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", target.aet, "127.0.0.1", str(target.port), *map(str, chunk)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    failed = [p for p in procs if p.wait() != 0]
    seconds = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"storescu failed against {target.name}")
    return seconds


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--processes", type=int, default=0, help="0 = receiver default")
    parser.add_argument("--associations", default="1,4")
    parser.add_argument("--targets", default="noduleflow,storescp,orthanc")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; median kept")
    args = parser.parse_args()
    servers = {
        "noduleflow": lambda w: noduleflow(w, args.processes),
        "storescp": storescp,
        "orthanc": orthanc,
    }
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        _, _, files = write_ct_series(root / "ct", args.slices, rows=args.size, cols=args.size)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"study: {len(files)} CT slices {args.size}x{args.size}, {megabytes:.1f} MB; "
            f"host: {_cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
            f"python {platform.python_version()}; noduleflow receiver processes: "
            f"{args.processes or 'default'}"
        )
        results: list[Result] = []
        for associations in [int(a) for a in args.associations.split(",")]:
            for name in args.targets.split(","):
                times = []
                for run in range(args.repeat):
                    workdir = root / f"{name}-{associations}-{run}"
                    workdir.mkdir()
                    with servers[name](workdir) as target:
                        seconds = send(target, files, associations)
                        stored = target.count()
                    if stored != len(files):
                        raise RuntimeError(f"{name} stored {stored} of {len(files)}")
                    times.append(seconds)
                    shutil.rmtree(workdir, ignore_errors=True)
                median = statistics.median(times)
                results.append(Result(name, associations, median, len(files), megabytes))
                runs = ", ".join(f"{t:.2f}" for t in times)
                print(
                    f"  {name:<10} {associations} assoc: median {median:6.2f} s ({runs})",
                    flush=True,
                )
        print_table(results)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


def print_table(results: list[Result]) -> None:
    def find(name: str, associations: int) -> Result | None:
        return next(
            (r for r in results if r.target == name and r.associations == associations), None
        )

    print()
    print("| receiver | assoc | images/s | MB/s | vs Orthanc | vs storescp |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratios = []
        for anchor in ("orthanc", "storescp"):
            base = find(anchor, r.associations)
            ratios.append(f"{r.images_per_s / base.images_per_s:.2f}x" if base else "-")
        print(
            f"| {r.target} | {r.associations} | {r.images_per_s:.0f} | {r.mb_per_s:.1f} | "
            f"{ratios[0]} | {ratios[1]} |"
        )


if __name__ == "__main__":
    main()
