"""Burst benchmark: many studies at once over several associations, until all are reported.

    python tests/perf/bench_burst.py [--studies 20] [--associations 4] [--slices 300]
                                     [--form distributed|serve] [--png PATH] [--small]

``--studies`` copies of a phantom chest CT (512×512, ``--slices`` slices, new UIDs each) are
sent at once by ``--associations`` DCMTK ``storescu`` processes, each carrying whole studies
one after another, to a fresh node (``tests/perf/node.py``: the distributed form by default,
or ``serve``) whose PACS is a real Orthanc. The clock runs from the first association until
the last study's artefacts are all in Orthanc and its FHIR report is readable.

Prints studies per hour and the ratio to the anchor — the analysis pipeline alone
(``analyze_files`` in this process, warm, same study, with malloc set as in the worker; the
mean of ``--anchor-runs`` runs before the burst and as many after, as the machine's speed
may change meanwhile) times the
number of studies: 1.00 means the services around the model cost nothing. Also: that
nothing was lost or doubled (one done job per study, every instance indexed, one SR per
study in Orthanc), the peak RSS of every process, each service's RSS growth from study 5 to
the last (by report time), and the queue depth over time (job states every 0.5 s), written
as a PNG, each study's completion wait and analysis time, when the first analysis started
and how long the last report lagged the last analysis, the CPU seconds each service used
against the pipeline alone's, and the whole machine's (``/proc/stat``): what PostgreSQL,
RabbitMQ, ``storescu`` and the kernel took besides, and the ratio taken apart: cores × the
share of them busy × the anchor's seconds ÷ the machine's CPU seconds per study, of which
what ran outside the worker's process. The worker runs
``NODULEFLOW_WORKER_CONCURRENCY`` jobs at once (passed through; default 2) and keeps freed
memory unless ``NODULEFLOW_WORKER_KEEP_MEMORY=false``, and gives each job at once a model
session on its share of the cores unless ``NODULEFLOW_WORKER_SPLIT_CORES=false`` (both
passed through; the anchor runs on the whole session either way). ``--small``: 4
studies of 60 slices unless given, a quick check of the script.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from services.core.db import Delivery, Instance, Job, JobState, Series, Study  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from tests.integration.worker.harness import clone_study  # noqa: E402
from tests.perf.bench_ingest import Target, _cpu_model, send_chunks  # noqa: E402
from tests.perf.bench_worker import heap_as_in_the_worker, pipeline_alone  # noqa: E402
from tests.perf.node import Node, process_priority, running_node  # noqa: E402
from tests.perf.pngplot import write_step_chart  # noqa: E402
from tests.perf.timeline import StudyTimes, cpu_bound_ratio, growth, per_hour  # noqa: E402
from tests.perf.watch import Watcher, study_times  # noqa: E402

FINAL_BAD = (JobState.FAILED.value, JobState.SKIPPED.value)


def measure_anchor(files: list[Path], runs: int) -> tuple[list[float], float, str]:
    """The pipeline alone in this process (warm): the seconds of each of ``runs`` analyses,
    the CPU seconds of one, and the provider. The model is loaded for it and let go after."""
    from services.analysis.engine import Engine

    engine = Engine.load(
        ROOT / "models" / "nodule-seg", os.environ.get("NODULEFLOW_PROVIDERS", "auto")
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = [float(pipeline_alone(engine, files, repeats=1)["seconds"])]
    for _ in range(runs - 1):
        seconds.append(float(pipeline_alone(engine, files, repeats=1, warm_up=False)["seconds"]))
    after = resource.getrusage(resource.RUSAGE_SELF)
    # the warm-up and the timed runs: CPU of one analysis
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (runs + 1)
    provider = str(engine.provider)
    del engine
    return seconds, cpu, provider


def make_studies(base: list[Path], count: int, work: Path) -> list[tuple[str, list[Path]]]:
    """``count`` copies of ``base`` under new UIDs: (study UID, files)."""
    import pydicom

    studies = []
    for n in range(count):
        files = clone_study(base, work / f"study{n:02d}")
        studies.append(
            (str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files)
        )
    return studies


def wait_all(node: Node, watcher: Watcher, uids: list[str], timeout: float) -> list[StudyTimes]:
    deadline = time.monotonic() + timeout
    done: dict[str, StudyTimes] = {}
    while len(done) < len(uids):
        finished = {j.study_uid for j in list(watcher.jobs.values()) if j.state == "done"}
        for uid in uids:
            if uid not in done and uid in finished:
                try:
                    done[uid] = study_times(node, watcher, uid)
                except RuntimeError:
                    pass  # not reported yet
        bad = [j for j in list(watcher.jobs.values()) if j.state in FINAL_BAD]
        if bad:
            raise SystemExit(f"job {bad[0].job_id} ended {bad[0].state}")
        if not node.alive():
            raise SystemExit(f"a {node.form} process died; see the logs")
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(uids) - len(done)} studies not reported in {timeout:.0f} s")
        time.sleep(0.5)
    return [done[uid] for uid in uids]


def integrity(node: Node, watcher: Watcher, uids: list[str], slices: int) -> dict[str, int]:
    """Counts that must match: lost and doubled work shows here."""
    with node.db.session() as session:
        jobs = Counter(
            session.scalars(select(Study.study_instance_uid).join(Job, Job.study_id == Study.id))
        )
        done = session.scalar(select(func.count()).where(Job.state == JobState.DONE.value)) or 0
        instances = dict(
            session.execute(
                select(Study.study_instance_uid, func.count(Instance.id))
                .join(Series, Series.study_id == Study.id)
                .join(Instance, Instance.series_id == Series.id)
                .group_by(Study.study_instance_uid)
            ).all()
        )
        retried = session.scalar(select(func.count()).where(Delivery.attempts > 1)) or 0
    srs = Counter(uid for _, uid, modality in watcher.arrivals if modality == "SR")
    return {
        "studies without a job": sum(1 for uid in uids if jobs[uid] == 0),
        "studies with more than one job": sum(1 for uid in uids if jobs[uid] > 1),
        "jobs not done": len(uids) - done,
        "instances not indexed": sum(slices - instances.get(uid, 0) for uid in uids),
        "studies without an SR in Orthanc": sum(1 for uid in uids if srs[uid] == 0),
        "studies with more than one SR in Orthanc": sum(1 for uid in uids if srs[uid] > 1),
        "deliveries retried (not a duplicate by itself)": retried,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=None, help="20 (small: 4)")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--slices", type=int, default=None, help="300 (small: 60)")
    parser.add_argument("--form", default="distributed", choices=("distributed", "serve"))
    parser.add_argument("--completion", default="default", choices=("default", "fastest"))
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--anchor-runs", type=int, default=2, help="pipeline-alone runs before and after"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--png", type=Path, default=ROOT / "tests/perf/out/burst_queue.png")
    parser.add_argument("--logs", type=Path, default=None, help="copy the services' logs here")
    parser.add_argument("--small", action="store_true", help="4 studies of 60 slices")
    args = parser.parse_args()
    args.studies = args.studies or (4 if args.small else 20)
    args.slices = args.slices or (60 if args.small else 300)
    heap_as_in_the_worker()  # the anchor's malloc as the worker's
    from services.modeling.phantom import write_phantom

    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
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
        base = sorted(phantom.files)
        first_anchor, anchor_cpu, provider = measure_anchor(base, args.anchor_runs)
        studies = make_studies(base, args.studies, work / "studies")
        uids = [uid for uid, _ in studies]
        chunks: list[list[Path]] = [[] for _ in range(args.associations)]
        for n, (_, files) in enumerate(studies):
            chunks[n % args.associations].extend(files)
        settings = Settings()
        print(
            f"burst: {args.studies} studies x {args.slices} CT slices 512x512 over "
            f"{args.associations} associations, {args.form} form, {args.completion} completion; "
            f"host: {_cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
            f"python {platform.python_version()}; provider {provider}; worker concurrency "
            f"{settings.worker_concurrency}, keeps freed memory {settings.worker_keep_memory}, "
            f"splits the cores between jobs {settings.worker_split_cores}"
        )
        with running_node(work / "node", form=args.form, completion=args.completion) as node:
            print(
                "CPU priority: "
                + "; ".join(
                    f"{name} {process_priority(pids[0])}"
                    for name, pids in sorted(node.pids().items())
                    if pids
                )
            )
            with Watcher(node, interval=0.5) as watcher:
                started = time.time()
                send_chunks(Target("noduleflow", node.aet, node.dicom_port, lambda: 0, 0), chunks)
                sent = time.time() - started
                times = wait_all(node, watcher, uids, args.timeout)
            checks = integrity(node, watcher, uids, args.slices)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in (work / "node").glob("*.log"):
                shutil.copy(log, args.logs / log.name)
        # again after the node stopped: the machine's load may have changed meanwhile
        second_anchor, _, _ = measure_anchor(base, args.anchor_runs)
        anchor = statistics.mean(first_anchor + second_anchor)
        print(
            "pipeline alone: "
            + " / ".join(f"{s:.1f}" for s in first_anchor)
            + " s before the burst, "
            + " / ".join(f"{s:.1f}" for s in second_anchor)
            + f" s after; the anchor is their mean, {anchor:.1f} s"
        )
        report(args, started, sent, (anchor, anchor_cpu), times, watcher, checks)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def report(
    args: argparse.Namespace,
    started: float,
    sent: float,
    anchors: tuple[float, float],
    times: list[StudyTimes],
    watcher: Watcher,
    checks: dict[str, int],
) -> None:
    anchor, anchor_cpu = anchors  # seconds and CPU seconds of the pipeline alone
    finished = max(max(t.all_in_pacs, t.fhir_readable) for t in times)
    elapsed = finished - started
    rate = per_hour(len(times), elapsed)
    ideal = anchor * len(times)
    print(f"sent in {sent:.1f} s; all reported after {elapsed:.1f} s")
    print(
        f"throughput: {rate:.0f} studies/hour; anchor (pipeline alone, {anchor:.1f} s/study, "
        f"x{len(times)} = {ideal:.0f} s): {per_hour(len(times), ideal):.0f}/hour; "
        f"ratio {ideal / elapsed:.2f} (target >= 0.90)"
    )
    turnaround = [t.sr_in_pacs - t.last_ack for t in times]
    print(
        f"last image -> SR in Orthanc per study: median {statistics.median(turnaround):.1f} s, "
        f"max {max(turnaround):.1f} s"
    )
    waits = sorted(t.complete - t.last_ack for t in times)
    first_wait = times[0].complete - times[0].last_ack  # the first study sent
    print(
        f"last image -> study complete: median {statistics.median(waits):.1f} s, "
        f"{waits[0]:.1f} to {waits[-1]:.1f} s (first study {first_wait:.1f} s)"
    )
    opening = min(times, key=lambda t: t.analysis_start)
    idle_until = opening.analysis_start - started
    print(
        f"the first analysis: its last image {opening.last_ack - started:.1f} s after the first "
        f"association opened, complete {opening.complete - started:.1f} s, analysis from "
        f"{idle_until:.1f} s (the worker idle until then: {100 * idle_until / elapsed:.0f} % of "
        f"the burst); the last report {finished - max(t.analysis_end for t in times):.1f} s "
        "after the last analysis"
    )
    analyses = sorted(t.analysis_end - t.analysis_start for t in times)
    print(
        f"analysis in the worker: median {statistics.median(analyses):.1f} s, "
        f"{analyses[0]:.1f} to {analyses[-1]:.1f} s (pipeline alone {anchor:.1f} s)"
    )
    lost = sum(
        v for k, v in checks.items() if k.startswith(("studies without", "jobs not", "instances"))
    )
    doubled = sum(v for k, v in checks.items() if "more than one" in k)
    print(
        f"lost: {lost}, duplicated: {doubled} ({', '.join(f'{k} {v}' for k, v in checks.items())})"
    )
    print(
        "peak RSS per process (MB): "
        + ", ".join(
            f"{service}[{pid}] {peak / 2**20:.0f}"
            for (service, pid), peak in sorted(watcher.peak_rss.items())
        )
    )
    reported = sorted(t.done for t in times)
    first = 4 if len(reported) >= 10 else len(reported) // 4  # study 5 of 20
    for service, samples in sorted(watcher.rss.items()):
        change = growth(samples, reported[first], reported[-1])
        print(
            f"RSS growth {service} from study {first + 1} to study {len(reported)}: "
            f"{100 * change:+.1f} % (target < 10 %)"
        )
    depth = {
        state: [(t - started, float(c[state])) for t, c in watcher.depth if t >= started]
        for state in ("queued", "inferring", "reporting", "done")
    }
    args.png.parent.mkdir(parents=True, exist_ok=True)
    write_step_chart(
        args.png,
        depth,
        title=f"{len(times)} studies over {args.associations} associations ({args.form})",
        x_label="seconds since the first association",
        y_label="jobs",
    )
    peak = max(c["queued"] for _, c in watcher.depth)
    print(f"queue depth: at most {peak} jobs waiting; plot written to {args.png}")
    used = watcher.cpu_seconds_by_service()
    print(
        "CPU seconds while watched: "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in sorted(used.items()))
        + f", the benchmark's watcher {watcher.cpu_seconds:.1f}; per study: "
        + ", ".join(f"{name} {seconds / len(times):.1f}" for name, seconds in sorted(used.items()))
        + f" (pipeline alone {anchor_cpu:.1f})"
    )
    busy, total = watcher.machine
    services = sum(used.values()) + watcher.cpu_seconds
    print(
        f"the whole machine while watched: {busy:.0f} of {total:.0f} CPU seconds busy "
        f"({100 * busy / total:.0f} %); outside the node's services, Orthanc and the watcher "
        f"(PostgreSQL, RabbitMQ, storescu, the kernel): {busy - services:.0f}, "
        f"{(busy - services) / len(times):.1f} per study"
    )
    cores, per_study = os.cpu_count() or 1, busy / len(times)
    others = per_study - used.get("worker", used.get("serve", 0.0)) / len(times)
    print(
        f"what sets the ratio: {cores} cores x {busy / total:.2f} busy x the anchor's "
        f"{anchor:.1f} s / {per_study:.1f} s of CPU per study = "
        f"{cpu_bound_ratio(cores, busy / total, anchor, per_study):.2f}; of those "
        f"{others:.1f} s outside the worker's process ({100 * others / anchor_cpu:.0f} % of "
        f"the pipeline alone's {anchor_cpu:.1f} s)"
    )
    if watcher.errors:
        print(f"({len(watcher.errors)} polls failed and were retried; last: {watcher.errors[-1]})")


if __name__ == "__main__":
    main()
