"""``make chaos``: the distributed form under a seeded storm of faults, then its invariants.

    python -m tests.chaos.run --seed 1717 [--studies 30 --faults 24 --span 150]

Starts two ``noduleflow receiver``s (two ports, one database and storage), two
``worker``s (stub model: the real engine and pipeline on a one-layer network) and a
``reporter`` delivering to DCMTK ``storescp``; RabbitMQ and PostgreSQL are reached through
proxies the schedule cuts, and storage is a volume it fills. While studies go out over
several associations, the schedule (:mod:`tests.chaos.schedule`) SIGKILLs and restarts
services, cuts the broker and the database and fills the disk. When the storm is over and
the node has settled, the invariants of :mod:`tests.chaos.invariants` are checked and the
table printed. Exit status 0 when every invariant held, 1 when one did not, 2 when a
service the suite needs is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from services.core.db import Database, Delivery, OutboxMessage
from tests.chaos import invariants
from tests.chaos.cluster import Cluster, Pacs, make_services, service_env
from tests.chaos.disk import Volume
from tests.chaos.invariants import Check, current_report, job_rows
from tests.chaos.proxy import CuttableProxy
from tests.chaos.report import Injected, render, timeline
from tests.chaos.schedule import Fault, Kind, make_schedule
from tests.chaos.traffic import Sender, Study, write_studies
from tests.chaos.world import World

DEFAULT_SEED = 1717


@dataclass(frozen=True)
class Options:
    seed: int = DEFAULT_SEED
    studies: int = 30
    faults: int = 24
    span: float = 150.0  # seconds of faults
    slices: int = 48
    settle: float = 240.0  # seconds allowed after the storm for the node to finish
    workdir: Path | None = None
    keep: bool = False
    disk: str = "auto"  # "auto": a tmpfs where it can be mounted; "guard": the free-space guard


@dataclass
class Outcome:
    checks: list[Check]
    injected: list[Injected]
    table: str

    @property
    def ok(self) -> bool:
        return all(c.held for c in self.checks)


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


def inject(cluster: Cluster, fault: Fault) -> str:
    if fault.kind in (Kind.KILL_WORKER, Kind.KILL_RECEIVER, Kind.KILL_REPORTER):
        role = fault.kind.value.split()[1]
        name = f"{role}-{fault.target}"
        service = cluster.services[name]
        pid = service.proc.pid if service.alive and service.proc is not None else None
        cluster.kill(name, fault.duration)
        return f"SIGKILL {name} pid {pid}" if pid else f"{name} was already down"
    if fault.kind is Kind.CUT_BROKER:
        before = cluster.broker_proxy.dropped
        cluster.broker_proxy.cut()
        return f"{cluster.broker_proxy.dropped - before} broker links reset"
    if fault.kind is Kind.CUT_DATABASE:
        before = cluster.db_proxy.dropped
        cluster.db_proxy.cut()
        return f"{cluster.db_proxy.dropped - before} database links reset"
    written = cluster.volume.fill()
    return f"{written} MB ballast ({cluster.volume.mode})"


def undo(cluster: Cluster, fault: Fault) -> None:
    if fault.kind is Kind.CUT_BROKER:
        cluster.broker_proxy.restore()
    elif fault.kind is Kind.CUT_DATABASE:
        cluster.db_proxy.restore()
    elif fault.kind is Kind.FILL_DISK:
        cluster.volume.drain()


def storm(cluster: Cluster, schedule: list[Fault]) -> list[Injected]:
    """Apply the schedule in time order (an outage is undone before the next fault that
    starts at the same moment); returns what each fault did."""
    events = [(f.at, 1, f) for f in schedule]
    events += [(f.at + f.duration, 0, f) for f in schedule if f.kind.outage]
    start = time.monotonic()
    injected = []
    for at, phase, fault in sorted(events, key=lambda e: (e[0], e[1])):
        time.sleep(max(0.0, start + at - time.monotonic()))
        if phase == 0:
            undo(cluster, fault)
            continue
        effect = inject(cluster, fault)
        injected.append(Injected(fault, effect))
        say(f"{fault.describe()}: {effect}")
    return injected


def unfinished(db: Database, studies: list[Study]) -> list[str]:
    """What the node still owes: studies without a final report, pending deliveries,
    unpublished messages."""
    by_study: dict[str, list[invariants.JobRow]] = {}
    for row in job_rows(db):
        by_study.setdefault(row.study_uid, []).append(row)
    out = []
    for study in studies:
        why = current_report(by_study.get(study.study_uid, []), len(study.acked))
        if why is not None:
            out.append(f"study {study.index}: {why}")
    with db.session() as session:
        deliveries = session.scalar(
            select(func.count(Delivery.id)).where(Delivery.state == "pending")
        )
        unpublished = session.scalar(
            select(func.count(OutboxMessage.id)).where(OutboxMessage.published_at.is_(None))
        )
    if deliveries:
        out.append(f"{deliveries} deliveries pending")
    if unpublished:
        out.append(f"{unpublished} outbox messages unpublished")
    return out


def settle(db: Database, studies: list[Study], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = unfinished(db, studies)
        except Exception as exc:  # the harness's own link is direct; retry a hiccup
            left = [f"check failed: {type(exc).__name__}"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(2.0)


def run(options: Options) -> Outcome:
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="noduleflow-chaos-"))
    say(f"seed {options.seed}, work folder {workdir}")
    world = World.create(workdir)
    outcome: Outcome | None = None
    try:
        outcome = _run(options, world)
        return outcome
    finally:
        keep = options.keep or outcome is None or not outcome.ok
        world.close(keep=keep)
        if keep:
            say(f"kept {workdir} and database {world.db_name}")


def _run(options: Options, world: World) -> Outcome:
    say(f"writing {options.studies} studies of {options.slices} slices")
    studies = write_studies(world.workdir / "studies", options.studies, options.slices)
    volume = Volume(world.workdir / "volume", tmpfs=options.disk == "auto")
    world.on_close(volume.close)
    broker_proxy = CuttableProxy(("127.0.0.1", world.broker_port), "broker-proxy")
    db_proxy = CuttableProxy(("127.0.0.1", world.db_port), "database-proxy")
    logs = world.workdir / "logs"
    logs.mkdir(exist_ok=True)
    pacs = Pacs(world.workdir / "pacs", logs / "pacs.log")
    env = service_env(
        database_url=world.database_url(db_proxy.port),
        broker_url=world.broker_url(broker_proxy.port),
        prefix=world.prefix,
        storage=volume.root / "storage",
        outbox=volume.root / "outbox",
        model_dir=world.model_dir,
        pacs=pacs.address,
        min_free_disk_mb=volume.min_free_disk_mb,
    )
    services = make_services(env, logs, workers=2, receivers=2)
    cluster = Cluster({s.name: s for s in services}, broker_proxy, db_proxy, volume, pacs)
    world.on_close(cluster.stop)
    cluster.start()
    say(f"node up: receivers on {cluster.receiver_ports}, storage on {volume.mode}")

    schedule = make_schedule(options.seed, options.faults, options.span)
    interval = options.span * 0.8 / max(1, options.studies)
    sender = Sender(
        studies, cluster.receiver_ports, interval, deadline=time.monotonic() + options.span + 90
    )
    sending = threading.Thread(target=sender.run, name="sender", daemon=True)
    started = time.monotonic()
    sending.start()
    injected = storm(cluster, schedule)
    for fault in schedule:  # the storm is over: everything back
        undo(cluster, fault)
    say("storm over; waiting for the senders")
    sending.join(timeout=max(1.0, sender.deadline - time.monotonic() + 5))
    say("sending done; waiting for the node to settle")
    left = settle(world.db, studies, options.settle)
    elapsed = time.monotonic() - started
    if left:
        say(f"not settled after {options.settle:.0f} s: {left[:5]}")
    cluster.stop()

    checks = [
        invariants.check_instances(world.db, volume.root / "storage", studies),
        invariants.check_reports(job_rows(world.db), studies),
        invariants.check_doubles(job_rows(world.db)),
        invariants.check_deliveries(world.db, pacs.folder),
        invariants.check_logs(sorted(logs.glob("*.log")), studies),
    ]
    versions = invariants.versions_note(job_rows(world.db), studies)
    files = sum(len(s.files) for s in studies)
    acked = sum(len(s.acked) for s in studies)
    header = (
        f"{len(studies)} studies ({files} instances, {acked} acknowledged, "
        f"{sum(s.refusals for s in studies)} sends refused or unanswered and retried), "
        f"{len(injected)} faults over {options.span:.0f} s; settled {elapsed:.0f} s after "
        "the first send"
    )
    restarts = ", ".join(
        f"{s.name} {s.starts - 1} restarts ({s.unplanned_exits} unplanned)" for s in services
    )
    by_name = {c.name: len(c.problems) for c in checks}
    lost = sum(by_name[c.name] for c in checks[:2]) + by_name[checks[3].name]
    notes = [
        f"lost: {lost}, doubled: {by_name[checks[2].name]}, "
        f"patient identifiers in logs: {by_name[checks[4].name]}",
        versions,
        f"services: {restarts}",
        *(f"unplanned exit of {s.name}: {reason}" for s in services for reason in s.exit_reasons),
        f"storage: {volume.mode}; temporary files left: {world.part_files(volume.root) or 'none'}",
        f"command: python -m tests.chaos.run --seed {options.seed} --studies {options.studies} "
        f"--faults {options.faults} --span {options.span:.0f}"
        + (f" --disk {options.disk}" if options.disk != "auto" else ""),
    ]
    table = render(seed=options.seed, header=header, injected=injected, checks=checks, notes=notes)
    say("fault timeline:\n" + timeline(injected))
    return Outcome(checks, injected, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--studies", type=int, default=Options.studies)
    parser.add_argument("--faults", type=int, default=Options.faults)
    parser.add_argument("--span", type=float, default=Options.span, help="seconds of faults")
    parser.add_argument("--slices", type=int, default=Options.slices)
    parser.add_argument("--settle", type=float, default=Options.settle)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder and database")
    parser.add_argument(
        "--disk",
        choices=["auto", "guard"],
        default="auto",
        help="fill a tmpfs (auto, where it can be mounted) or trip the free-space guard",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # aborts are the point here
    missing = World.missing()
    if missing:
        print(f"chaos: cannot run without {', '.join(missing)}", file=sys.stderr)
        return 2
    outcome = run(Options(**vars(args)))
    print(outcome.table)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
