"""Ingest benchmark: one CT study sent by DCMTK storescu to noduleflow, storescp and Orthanc.

    python tests/perf/bench_ingest.py [--slices 300] [--size 512] [--processes 0]

For 1 and 4 associations (4 = the files split across 4 parallel storescu processes), each
receiver starts fresh (empty storage and index, in a new folder; all are removed at the end),
receives a small warm-up study (another study) over 4 associations at once (``--cold``
skips it: then the first association of each process pays one-off costs such as loading
and compiling what it uses first, some 30 ms per noduleflow process), is left until its
processes are idle and the machine's dirty pages are written back (``sync``), then
receives the whole study, and is checked for every instance; each case runs ``--repeat``
times, interleaved with the other receivers' runs, and the median is kept. Prints images/s
and MB/s, the ratios to Orthanc and to storescp, and each receiver's CPU time per image
(user + system, over its whole process tree, from ``/proc``). This machine's speed drifts
between runs (a whole run at times 1.5x slower in every receiver's CPU per image, storescp
included), so compare ratios from one run.
noduleflow runs as ``noduleflow receiver`` (multi-process, SQLite, fsync per instance);
storescp with ``--fork`` and a 128 KiB PDU (no fsync); Orthanc with its SQLite index.
Every DCMTK process gets ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import argparse
import os
import platform
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

from tests.factories.dicom import write_ct_series  # noqa: E402
from tests.orthanc import running_orthanc  # noqa: E402
from tests.services import free_port, wait_port  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
#: The warm-up study: a few slices over as many associations as the timed runs use at most,
#: so that every process of a multi-process receiver has served an association.
WARM_UP_SLICES = 8
WARM_UP_ASSOCIATIONS = 4


@dataclass
class Target:
    name: str
    aet: str
    port: int
    count: Callable[[], int]
    pid: int


@dataclass
class Result:
    target: str
    associations: int
    seconds: float
    images: int
    megabytes: float
    cpu_seconds: float = float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.images


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and every live descendant, plus the children
    ``root`` has already reaped (nan where ``/proc`` is not available)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    if root not in parents:
        return float("nan")
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total / _TICK


def wait_idle(
    pid: int, *, quiet: float = 0.02, interval: float = 0.25, timeout: float = 60
) -> None:
    """Return once the process tree of ``pid`` used less than ``quiet`` CPU seconds in each of
    two consecutive ``interval``s: a receiver answers C-ECHO as soon as one of its processes
    listens, while others may still be starting (importing, warming up), and that start-up
    CPU must not be billed to the images."""
    deadline = time.monotonic() + timeout
    calm = 0
    before = tree_cpu_seconds(pid)
    while calm < 2 and time.monotonic() < deadline:
        time.sleep(interval)
        now = tree_cpu_seconds(pid)
        calm = calm + 1 if now - before < quiet else 0
        before = now


def settle_disk() -> None:
    """Write back every dirty page on the machine (``sync``) before a timed send, so that no
    receiver's fsyncs queue behind another one's writeback: Orthanc and storescp leave their
    files in the page cache, and the kernel writes them out some 30 s later, which would be
    during the next receiver's run (and the generated study's, during the first)."""
    os.sync()


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
        # Neither study completes (a job, a relay round) while the benchmark measures.
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "60",
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
        yield Target("noduleflow", "NODULEFLOW", port, count, proc.pid)
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
        yield Target("storescp", "ANY-SCP", port, lambda: len(list(out.iterdir())), proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def orthanc(workdir: Path) -> Iterator[Target]:
    with running_orthanc(workdir / "orthanc") as server:
        _wait_echo(server.dicom_port, server.aet)
        assert server.process is not None
        yield Target(
            "orthanc", server.aet, server.dicom_port, server.instance_count, server.process.pid
        )


def send(target: Target, files: list[Path], associations: int) -> float:
    """Seconds from the first storescu start to the last storescu exit."""
    return send_chunks(target, [files[i::associations] for i in range(associations)])


def send_chunks(target: Target, chunks: list[list[Path]]) -> float:
    """One storescu association per chunk, all at once; seconds until the last exits."""
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
        output = failed[0].stderr
        detail = output.read().decode(errors="replace")[-2000:] if output else ""
        raise RuntimeError(f"storescu failed against {target.name}:\n{detail}")
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
    parser.add_argument("--cold", action="store_true", help="no warm-up study before the timed one")
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
        _, _, warm = write_ct_series(root / "warm", WARM_UP_SLICES, rows=args.size, cols=args.size)
        print(
            f"study: {len(files)} CT slices {args.size}x{args.size}, {megabytes:.1f} MB; "
            f"host: {_cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
            f"python {platform.python_version()}; noduleflow receiver processes: "
            f"{args.processes or 'default'}; "
            + ("cold receivers" if args.cold else f"warm-up: {len(warm)} other slices first")
        )
        results: list[Result] = []
        names = args.targets.split(",")
        for associations in [int(a) for a in args.associations.split(",")]:
            # Runs are interleaved (each receiver once, then again): on a machine whose speed
            # drifts, every receiver then meets the same conditions, and the ratios hold.
            times: dict[str, list[float]] = {name: [] for name in names}
            cpus: dict[str, list[float]] = {name: [] for name in names}
            for run in range(args.repeat):
                for name in names:
                    workdir = root / f"{name}-{associations}-{run}"
                    workdir.mkdir()
                    with servers[name](workdir) as target:
                        if not args.cold:
                            send(target, warm, WARM_UP_ASSOCIATIONS)
                        settle_disk()
                        wait_idle(target.pid)
                        before = target.count()
                        cpu_before = tree_cpu_seconds(target.pid)
                        seconds = send(target, files, associations)
                        stored = target.count() - before
                        time.sleep(0.5)  # connection close-down and reaped children count too
                        cpus[name].append(tree_cpu_seconds(target.pid) - cpu_before)
                    if stored != len(files):
                        raise RuntimeError(f"{name} stored {stored} of {len(files)}")
                    times[name].append(seconds)
                    # Finished runs stay on disk until the end: on ext4 without a journal,
                    # files deleted in the last ~15 s slow down every file creation near
                    # them, so deleting one run right before the next would bill the next
                    # receiver for this cleanup.
            for name in names:
                median = statistics.median(times[name])
                cpu = statistics.median(cpus[name])
                results.append(Result(name, associations, median, len(files), megabytes, cpu))
                runs = ", ".join(f"{t:.2f}" for t in times[name])
                cpu_runs = ", ".join(f"{1000 * c / len(files):.2f}" for c in cpus[name])
                print(
                    f"  {name:<10} {associations} assoc: median {median:6.2f} s ({runs}); "
                    f"CPU ms/image {1000 * cpu / len(files):.2f} ({cpu_runs})",
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
    print("| receiver | assoc | images/s | MB/s | vs Orthanc | vs storescp | CPU ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratios = []
        for anchor in ("orthanc", "storescp"):
            base = find(anchor, r.associations)
            ratios.append(f"{r.images_per_s / base.images_per_s:.2f}x" if base else "-")
        print(
            f"| {r.target} | {r.associations} | {r.images_per_s:.0f} | {r.mb_per_s:.1f} | "
            f"{ratios[0]} | {ratios[1]} | {r.cpu_ms_per_image:.2f} |"
        )


if __name__ == "__main__":
    main()
