"""FHIR search latency and throughput with 10 000 reports in PostgreSQL under concurrent load.

Run: ``.venv/bin/python tests/perf/bench_api.py [--reports 10000] [--workers 2]
[--clients 4] [--seconds 20]``

Creates a fresh PostgreSQL database, bulk-loads studies/jobs/findings, serves the real app with
``uvicorn --workers N`` (bearer token, audit rows written per request as in production), and
drives it from a second process with client threads (httpx, keep-alive) over a mix of searches
(by patient, by identifier, by accession, by date range, default page,
``_include=DiagnosticReport:result``, the chained ``patient.identifier=<MRN>`` an HIS uses, and
that search with ``_include=DiagnosticReport:subject``), each kind equally often.
Closed-loop rounds on the same server (each client sends its next request when the last one
answered: saturation throughput): round 1 starts with empty per-worker report caches (every
report is built and validated on first use), round 2 runs on what round 1 cached. A final
paced round offers a fixed rate (``--rate``) and counts latency from each request's scheduled
send time, which is the figure to hold against the p95 anchor.
Prints p50/p95/p99 per query kind and overall, throughput, server CPU per request, the
machine's load average, and the ratio to the anchor (p95 < 50 ms on 2 cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "bench-7f3c9a1e5b8d2f60c4a9e1b7d3f5a8c2"
TARGET_P95_MS = 50.0


def app_factory():  # type: ignore[no-untyped-def]
    """uvicorn --factory entry: the real app on the database named in the environment."""
    from services.core.db import Database
    from services.core.settings import Settings
    from services.reporter.api.app import create_app

    settings = Settings()
    return create_app(settings, Database(settings.database_url))


def seed(url: str, reports: int) -> None:
    from sqlalchemy import insert

    from services.core.db import Database, Finding, Instance, Job, Series, Study
    from services.core.db.models import patient_key

    db = Database(url)
    db.upgrade()
    rng = random.Random(7)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    batch = 2000
    with db.engine.begin() as conn:
        for start in range(0, reports, batch):
            rows = range(start, min(start + batch, reports))
            studies, series, instances, jobs, findings = [], [], [], [], []
            for n in rows:
                pid = f"P{n % (reports // 4 or 1):06d}"  # about four studies per patient
                received = base + timedelta(minutes=37 * n)
                studies.append(
                    {
                        "id": n + 1,
                        "study_instance_uid": f"1.2.826.0.1.3680043.10.543.9.{n}",
                        "patient_id": pid,
                        "patient_key": patient_key(pid),
                        "patient_name": f"Patient^{n}",
                        "accession_number": f"A{n:07d}",
                        "study_date": received.strftime("%Y%m%d"),
                        "study_time": "101500",
                        "study_description": "CT CHEST",
                        "first_received_at": received,
                        "last_received_at": received,
                    }
                )
                series.append(
                    {
                        "id": n + 1,
                        "study_id": n + 1,
                        "modality": "CT",
                        "series_instance_uid": f"1.2.826.0.1.3680043.10.543.8.{n}",
                    }
                )
                instances.append(
                    {
                        "series_id": n + 1,
                        "sop_instance_uid": f"1.2.826.0.1.3680043.10.543.7.{n}",
                        "sop_class_uid": str(CTImageStorage),
                        "transfer_syntax_uid": str(ExplicitVRLittleEndian),
                        "path": f"x/{n}.dcm",
                        "size": 1,
                        "sha256": "0" * 64,
                        "received_at": received,
                    }
                )
                job_id = f"{n:032x}"
                count = rng.choice([0, 1, 1, 2, 3])
                jobs.append(
                    {
                        "id": job_id,
                        "study_id": n + 1,
                        "version": 1,
                        "state": "done",
                        "created_at": received,
                        "updated_at": received,
                        "finished_at": received + timedelta(minutes=3),
                        "timings": {"inference": 2.0},
                        "details": {"model": {"name": "nodule-seg", "version": "1.0.0"}},
                        "model_version": "1.0.0",
                        "findings_count": count,
                        # placed as the result consumer places a first analysis: version 1
                        # of its own report (without these, no search finds it)
                        "report_id": job_id,
                        "report_version": 1,
                    }
                )
                for index in range(1, count + 1):
                    findings.append(
                        {
                            "job_id": job_id,
                            "index": index,
                            "center_x": -50.0,
                            "center_y": 10.0,
                            "center_z": -100.0,
                            "diameter_mm": rng.uniform(4, 25),
                            "long_axis_mm": 9.0,
                            "short_axis_mm": 7.0,
                            "volume_mm3": 300.0,
                            "mean_hu": -10.0,
                            "kind": "solid",
                            "confidence": 0.9,
                            "lung_rads": rng.choice(["2", "3", "4A", "4B"]),
                            "mask_bbox": {},
                            "mask": b"",
                            "source_sop_uids": {},
                        }
                    )
            for table, values in (
                (Study, studies),
                (Series, series),
                (Instance, instances),
                (Job, jobs),
                (Finding, findings),
            ):
                if values:
                    conn.execute(insert(table), values)
        conn.exec_driver_sql("ANALYZE")
    db.dispose()


def queries(reports: int, rng: random.Random) -> tuple[str, str]:
    from services.core.db.models import patient_key

    n = rng.randrange(reports)
    kind = rng.choice(
        ["patient", "identifier", "accession", "date", "page", "include", "chained", "subject"]
    )
    pid = f"P{n % (reports // 4 or 1):06d}"
    day = (datetime(2025, 1, 1) + timedelta(minutes=37 * n)).strftime("%Y-%m-%d")
    path = {
        "patient": f"/fhir/DiagnosticReport?patient=Patient/{patient_key(pid)}",
        "identifier": f"/fhir/DiagnosticReport?identifier=urn:noduleflow:report|{n:032x}",
        "accession": f"/fhir/DiagnosticReport?based-on:identifier=A{n:07d}",
        "date": f"/fhir/DiagnosticReport?date=ge{day}&date=lt2026-12-31&_count=20&_sort=-date",
        "page": f"/fhir/DiagnosticReport?_count=20&_offset={rng.randrange(0, 2000)}",
        "include": f"/fhir/DiagnosticReport?patient={patient_key(pid)}"
        "&_include=DiagnosticReport:result",
        "chained": f"/fhir/DiagnosticReport?patient.identifier={pid}",
        "subject": f"/fhir/DiagnosticReport?patient.identifier={pid}"
        "&_include=DiagnosticReport:subject",
    }[kind]
    return kind, path


def check_mix(base: str, reports: int) -> None:
    """One request of each kind before timing: 200 with at least one report (and the Patient
    for ``_include=DiagnosticReport:subject``), so the rounds do not time empty answers."""
    import httpx

    rng = random.Random(11)
    seen: dict[str, list[str]] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while len(seen) < 8:
            kind, path = queries(reports, rng)
            response = client.get(path)
            if response.status_code != 200:
                raise SystemExit(f"{kind}: {path} answered {response.status_code}")
            entries = response.json().get("entry", [])
            seen[kind] = [e["resource"]["resourceType"] for e in entries]
    empty = sorted(kind for kind, types in seen.items() if "DiagnosticReport" not in types)
    if empty:
        raise SystemExit(f"no report found by: {', '.join(empty)}")
    if "Patient" not in seen["subject"]:
        raise SystemExit("_include=DiagnosticReport:subject did not include the Patient")
    print("mix checked: every kind answers 200 with reports; :subject includes the Patient")


def client_thread(
    base: str,
    reports: int,
    deadline: float,
    seed_value: int,
    out: list[tuple[str, float, int]],
    interval: float = 0.0,
) -> None:
    """Closed loop (``interval`` 0: next request when the last one answered) or paced: one
    request every ``interval`` s, latency counted from its scheduled time (no coordinated
    omission: a late start counts as waiting)."""
    import httpx

    rng = random.Random(seed_value)
    scheduled = time.perf_counter() + rng.random() * interval
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        while time.monotonic() < deadline:
            kind, path = queries(reports, rng)
            if interval:
                time.sleep(max(0.0, scheduled - time.perf_counter()))
                start = scheduled
                scheduled += interval
            else:
                start = time.perf_counter()
            status = client.get(path).status_code
            out.append((kind, (time.perf_counter() - start) * 1000, status))


def load_process(
    base: str, reports: int, clients: int, seconds: float, queue: mp.Queue, rate: float = 0.0
) -> None:  # type: ignore[type-arg]
    import threading

    results: list[tuple[str, float, int]] = []
    deadline = time.monotonic() + seconds
    interval = clients / rate if rate else 0.0
    threads = [
        threading.Thread(target=client_thread, args=(base, reports, deadline, i, results, interval))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(results)


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children (Linux /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--rate",
        type=float,
        default=25.0,
        help="offered load (req/s) of the final paced round; 0 skips it",
    )
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    from tests.services import PG_ADMIN_URL, free_port, unique, wait_port

    name = unique("nf_bench_")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    server = None
    try:
        t0 = time.perf_counter()
        seed(url, args.reports)
        print(f"seeded {args.reports} reports in {time.perf_counter() - t0:.1f} s")
        port = free_port()
        env = {
            **os.environ,
            "NODULEFLOW_DATABASE_URL": url,
            "NODULEFLOW_API_TOKENS": TOKEN,
            "NODULEFLOW_API_HOST": "127.0.0.1",
            "NODULEFLOW_LOG_LEVEL": "WARNING",
            "NODULEFLOW_API_RATE_LIMIT": "0",  # measure the server, not the limiter
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.perf.bench_api:app_factory",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        if not wait_port("127.0.0.1", port, timeout=60):
            raise SystemExit("server did not start")
        base = f"http://127.0.0.1:{port}"
        check_mix(base, args.reports)
        rounds = [measure(base, server.pid, args) for _ in range(args.rounds)]
        if args.rate:
            rounds.append(measure(base, server.pid, args, rate=args.rate))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    print(
        f"\nFHIR search on PostgreSQL, {args.reports} DiagnosticReports, uvicorn "
        f"--workers {args.workers}, {args.clients} client threads in a second process, "
        f"{args.seconds:.0f} s per round, {os.cpu_count()} CPUs visible"
    )
    for number, (results, elapsed, server_cpu, load) in enumerate(rounds, start=1):
        label = (
            "closed loop, per-worker report caches empty"
            if number == 1
            else "closed loop, caches hold what earlier rounds built"
        )
        if number > args.rounds:
            label = f"paced: {args.rate:.0f} req/s offered, latency from scheduled send time"
        report(f"round {number} ({label})", results, elapsed, server_cpu, load)


def measure(
    base: str, server_pid: int, args: argparse.Namespace, rate: float = 0.0
) -> tuple[list[tuple[str, float, int]], float, float, list[str]]:
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    proc = mp.Process(
        target=load_process, args=(base, args.reports, args.clients, args.seconds, queue, rate)
    )
    cpu_before = tree_cpu_seconds(server_pid)
    start = time.perf_counter()
    proc.start()
    results = queue.get()
    proc.join()
    elapsed = time.perf_counter() - start
    server_cpu = tree_cpu_seconds(server_pid) - cpu_before
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    return results, elapsed, server_cpu, load


def report(
    title: str,
    results: list[tuple[str, float, int]],
    elapsed: float,
    server_cpu: float,
    load: list[str],
) -> None:
    errors = [r for r in results if r[2] != 200]
    latencies = [r[1] for r in results]
    print(f"\n{title}")
    print(f"{'query':<12}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for kind in sorted({r[0] for r in results}):
        values = [r[1] for r in results if r[0] == kind]
        print(
            f"{kind:<12}{len(values):>7}{pct(values, 50):>9.1f}{pct(values, 95):>9.1f}"
            f"{pct(values, 99):>9.1f}"
        )
    p95 = pct(latencies, 95)
    print(
        f"{'all':<12}{len(latencies):>7}{pct(latencies, 50):>9.1f}{p95:>9.1f}"
        f"{pct(latencies, 99):>9.1f}"
    )
    print(
        f"throughput {len(latencies) / elapsed:.1f} req/s, errors {len(errors)}, "
        f"mean {statistics.fmean(latencies):.1f} ms"
    )
    cpu_ms = server_cpu * 1000 / max(len(latencies), 1)
    print(
        f"API server CPU {cpu_ms:.1f} ms per request (all uvicorn workers; PostgreSQL not "
        f"included) -> at most {2000 / cpu_ms:.0f} req/s on 2 dedicated cores"
    )
    print(f"machine load average at the end: {' '.join(load)} (on {os.cpu_count()} CPUs)")
    print(
        f"anchor: p95 < {TARGET_P95_MS:.0f} ms -> p95/target = {p95 / TARGET_P95_MS:.2f} "
        f"({'met' if p95 < TARGET_P95_MS else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
