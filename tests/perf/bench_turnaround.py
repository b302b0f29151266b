"""Turnaround benchmark: from the last image acknowledged to the SR in the PACS and the FHIR
report readable, stage by stage.

    python tests/perf/bench_turnaround.py [--slices 300] [--forms serve,distributed]
                                          [--completion default,fastest] [--small]

A phantom chest CT (512×512, ``--slices`` slices of 1.25 mm, three 8–16 mm nodules) is sent
by DCMTK ``storescu`` (one association) to a fresh node — ``noduleflow serve`` (SQLite,
in-process broker) or the distributed form (``receiver``, ``worker``, ``reporter`` on
PostgreSQL and RabbitMQ) — whose PACS is a real Orthanc. Each stage is timed from the rows'
own timestamps (instances, job, outbox, job timings) and from what the benchmark sees from
outside: the SR and the other artefacts arriving in Orthanc (its change log, polled every
0.2 s) and the DiagnosticReport answering 200 on the FHIR API. Runs at the default completion
settings (idle 10 s, release grace 2 s) and the fastest safe ones (5 s, 0.5 s). Each node
first reports a 60-slice warm-up study (``--cold``: none), so the figures are those of a node
that has been running, not of its first study: that one also pays one-off costs such as
highdicom reading its 22 MB table of module attributes for the first SEG.

Anchors: how long other nodes wait before a study counts as complete — MONAI Informatics
Gateway's 5 s window, mercure's and Orthanc's 60 s — and the 20 s target from the last
image to the SR in the PACS (300 slices, 2 cores, inference included). ``--small`` is a quick
check of the script (60 slices, fastest settings, ``serve`` unless ``--forms`` says).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.core.db import Job, JobState, Study  # noqa: E402
from tests.perf.bench_ingest import Target, _cpu_model, send  # noqa: E402
from tests.perf.node import COMPLETION, Node, running_node  # noqa: E402
from tests.perf.timeline import (  # noqa: E402
    INFERENCE,
    TARGET_SR_SECONDS,
    StudyTimes,
    anchor_ratios,
    slowest_non_inference,
    stages,
    totals,
)
from tests.perf.watch import Watcher, study_times  # noqa: E402


def wait_reported(node: Node, watcher: Watcher, study_uid: str, timeout: float) -> StudyTimes:
    """The study's timeline once its results are all in Orthanc and FHIR; fails on a job
    that ends otherwise, a dead service or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with node.db.session() as session:
            job = session.query(Job).join(Study).filter(Study.study_instance_uid == study_uid)
            states = [(j.state, j.reason) for j in job]
        failed = [s for s in states if s[0] in (JobState.FAILED.value, JobState.SKIPPED.value)]
        if failed:
            raise SystemExit(f"the job ended {failed[0][0]}: {failed[0][1]}")
        if states and states[0][0] == JobState.DONE.value:
            try:
                return study_times(node, watcher, study_uid)
            except RuntimeError:
                pass  # deliveries or FHIR not seen yet
        if not node.alive():
            raise SystemExit(f"a {node.form} process died; see its log")
        if time.monotonic() > deadline:
            raise SystemExit(f"study {study_uid} not reported within {timeout:.0f} s")
        time.sleep(0.2)


def run_once(
    work: Path,
    study: tuple[str, list[Path]],
    warm_up: tuple[str, list[Path]] | None,
    form: str,
    completion: str,
    timeout: float,
) -> tuple[StudyTimes, dict[str, float]]:
    """A fresh node; the warm-up study (if any) reported first, then the timed one."""
    with running_node(work, form=form, completion=completion) as node, Watcher(node) as watcher:
        target = Target("noduleflow", node.aet, node.dicom_port, lambda: 0, 0)
        for uid, files in [warm_up, study] if warm_up else [study]:
            send(target, files, associations=1)
            times = wait_reported(node, watcher, uid, timeout)
        with node.db.session() as session:
            job = session.query(Job).join(Study).filter(Study.study_instance_uid == study[0]).one()
            analysis = {k: float(v) for k, v in job.timings.items() if isinstance(v, int | float)}
            model = job.model_identity
            print(f"\n{form}, {completion}: model {model.version} on {model.provider}")
    return times, analysis


def print_run(form: str, completion: str, times: StudyTimes, analysis: dict[str, float]) -> None:
    rules = ", ".join(f"{k.lower()} {v} s" for k, v in COMPLETION[completion].items())
    print(f"{form}, {completion} completion ({rules})")
    for name, seconds in stages(times):
        note = ""
        if name == "completion wait":
            note = "  " + ", ".join(f"{r:.2f}x {a}" for a, r in anchor_ratios(seconds).items())
        print(f"  {name:<44} {seconds:7.2f} s{note}")
    parts = ("read", "assemble", "crop", "inference", "second_stage", "mass_pass", "postprocess")
    print("    analysis: " + ", ".join(f"{k} {analysis[k]:.2f}" for k in parts if k in analysis))
    print(f"  {'FHIR report readable after done':<44} {times.fhir_readable - times.done:7.2f} s")
    for name, seconds in totals(times).items():
        print(f"  {name:<44} {seconds:7.2f} s")
    slowest, seconds = slowest_non_inference(times)
    sr = totals(times)["last image → SR in Orthanc"]
    print(f"  slowest non-inference stage: {slowest} ({seconds:.2f} s)")
    print(
        f"  last image → SR: {sr / TARGET_SR_SECONDS:.2f} of the {TARGET_SR_SECONDS:.0f} s target"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=None, help="300 (small: 60)")
    parser.add_argument("--forms", default=None, help="default serve,distributed (small: serve)")
    parser.add_argument("--completion", default="default,fastest")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--cold", action="store_true", help="no warm-up study first")
    parser.add_argument("--small", action="store_true", help="60 slices, fastest completion")
    args = parser.parse_args()
    args.slices = args.slices or (60 if args.small else 300)
    if args.small:
        args.completion = "fastest"
    args.forms = args.forms or ("serve" if args.small else "serve,distributed")
    from services.modeling.phantom import write_phantom

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-turnaround-") as tmp:
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
        files = sorted(phantom.files)
        warm_up = None
        if not args.cold:  # a node that has reported before: caches and runtimes warm
            small = write_phantom(work / "warm", seed=args.seed + 1, nodules=2, slices=60)
            warm_up = (small.study_uid, sorted(small.files))
        print(
            f"study: phantom seed {args.seed}, {len(files)} CT slices 512x512, one association, "
            f"{'cold node' if args.cold else 'after one warm-up study of 60 slices'}; "
            f"host: {_cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}; "
            f"python {platform.python_version()}"
        )
        for form in args.forms.split(","):
            for completion in args.completion.split(","):
                times, analysis = run_once(
                    work / f"{form}-{completion}",
                    (phantom.study_uid, files),
                    warm_up,
                    form,
                    completion,
                    args.timeout,
                )
                print_run(form, completion, times, analysis)
                rows.append((form, completion, times))
    print_table(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def print_table(rows: list[tuple[str, str, StudyTimes]]) -> None:
    print()
    print(
        "| form | completion | → SR in Orthanc | vs 20 s | completion wait | vs 5 s | vs 60 s "
        "| analysis | → FHIR readable | slowest other stage |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for form, completion, times in rows:
        steps = dict(stages(times))
        wait = steps["completion wait"]
        five, sixty = anchor_ratios(wait).values()
        total = totals(times)
        sr = total["last image → SR in Orthanc"]
        slowest, seconds = slowest_non_inference(times)
        print(
            f"| {form} | {completion} | {sr:.1f} s | {sr / TARGET_SR_SECONDS:.2f} | {wait:.1f} s "
            f"| {five:.2f} | {sixty:.2f} | {steps[INFERENCE]:.1f} s "
            f"| {total['last image → FHIR report readable']:.1f} s | {slowest} {seconds:.1f} s |"
        )


if __name__ == "__main__":
    main()
