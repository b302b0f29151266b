"""ORU^R01 over MLLP to a real TCP listener, through the delivery outbox and dispatcher.

The listener (asyncio, in a thread) reads MLLP blocks, parses each message back with hl7apy
and answers as told: AA, AE, AR, slowly, in tiny pieces, garbled, huge, or not at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hl7apy.core import Message
from hl7apy.parser import parse_message
from sqlalchemy import select, update

from services.core.db import Database, Delivery, Job
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.delivery.dispatch import HL7, DeliveryPolicy, Dispatcher
from services.reporter.delivery.senders import default_senders
from services.reporter.hl7.text import unescape
from services.reporter.results import ResultConsumer
from tests.factories.api import finding_spec, make_job, make_study
from tests.services import free_port

pytestmark = pytest.mark.integration

VT, END = b"\x0b", b"\x1c\x0d"


def ack_for(message: Any, code: str, text: str = "") -> bytes:
    """An original-mode ACK built with hl7apy."""
    reply = Message("ACK", version="2.5.1", validation_level=2)
    reply.msh.msh_3 = "RIS"
    reply.msh.msh_5 = message.msh.msh_3.to_er7()
    reply.msh.msh_9 = "ACK^R01^ACK"
    reply.msh.msh_10 = "ACK" + message.msh.msh_10.to_er7()[:17]
    reply.msh.msh_11 = "P"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = message.msh.msh_10.to_er7()
    if text:
        reply.msa.msa_3 = text
    return VT + reply.to_er7().encode() + END


@dataclass
class Listener:
    """A scripted MLLP peer; ``behaviours`` are used in turn, the last one repeating."""

    behaviours: list[str] = field(default_factory=lambda: ["AA"])
    port: int = field(default_factory=free_port)
    received: list[Any] = field(default_factory=list)
    connections: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            data = await reader.readuntil(END)
            message = parse_message(data.strip(VT + END).decode(), find_groups=True)
            self.received.append(message)
            turn = self.behaviours[min(len(self.received), len(self.behaviours)) - 1]
            if turn in ("AA", "AE", "AR"):
                writer.write(ack_for(message, turn, "" if turn == "AA" else f"{turn} & reason"))
            elif turn == "slow":
                await asyncio.sleep(3)
                writer.write(ack_for(message, "AA"))
            elif turn == "pieces":  # partial reads: one byte at a time
                for byte in ack_for(message, "AA"):
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.002)
            elif turn == "garbled":
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            elif turn == "huge":
                writer.write(VT)
                for _ in range(200):  # 200 x 4 KiB and never an end
                    writer.write(b"X" * 4096)
                    await writer.drain()
            elif turn == "silent-close":
                pass
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> Listener:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self._stop = asyncio.Event()
            ready.set()
            async with server:
                await self._stop.wait()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:  # a slow reply still sleeping
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        self._loop = loop
        self._thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
        self._thread.start()
        assert ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def listener() -> Iterator[Listener]:
    peer = Listener().start()
    yield peer
    peer.stop()


def _settings(settings: Settings, port: int) -> Settings:
    return settings.model_copy(
        update={
            "hl7_peer": f"127.0.0.1:{port}",
            "hl7_receiving_application": "RIS",
            "hl7_receiving_facility": "GENERAL",
            # under the "slow" peer's 3 s, above a loaded machine's worst garbled reply
            # (a 1 s timeout read one as a timeout in a full test run)
            "hl7_ack_timeout_seconds": 2.0,
        }
    )


def _job(
    db: Database, settings: Settings, *, version: int = 1, study_uid: str = "", issuer: str = ""
) -> str:
    """A finished job with its delivery rows made as the result consumer makes them."""
    with db.session() as session:
        study = make_study(
            session, patient_id="HL7-1", accession="ACC-HL7", issuer_of_patient_id=issuer
        )
        if version > 1:
            make_job(session, study, findings=[finding_spec()])
        job = make_job(
            session,
            study,
            version=version,
            findings=[finding_spec(diameter_mm=12.0, lung_rads="4A"), finding_spec()],
        ).job
        ResultConsumer(db, settings)._create_deliveries(session, job, [])
        return job.id


def _row(db: Database, job_id: str) -> Delivery:
    with db.session() as session:
        row = session.scalar(
            select(Delivery).where(Delivery.job_id == job_id, Delivery.kind == HL7)
        )
        assert row is not None
        session.expunge(row)
        return row


def _dispatch(db: Database, settings: Settings, job_id: str, rounds: int = 1) -> Delivery:
    """Dispatch ``rounds`` times, making a retried row due at once in between."""
    policy = DeliveryPolicy(base_seconds=60.0, max_attempts=3)
    dispatcher = Dispatcher(db, default_senders(db, settings), policy)
    for _ in range(rounds):
        with db.session() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.job_id == job_id)
                .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        dispatcher.dispatch_once()
    return _row(db, job_id)


def test_accepted_oru_is_parsed_back_and_its_ack_shown(
    listener: Listener, db: Database, settings: Settings
) -> None:
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id)
    assert row.state == "delivered" and row.attempts == 1 and row.target == settings.hl7_peer
    assert row.last_status == "AA" and row.last_error == f"ACK AA of {job_id[:20]}"

    (message,) = listener.received
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_5.to_er7() == "RIS" and message.msh.msh_6.to_er7() == "GENERAL"
    result = message.ORU_R01_PATIENT_RESULT
    assert result.ORU_R01_PATIENT.PID.pid_3.cx_1.to_er7() == "HL7-1"
    obr = result.ORU_R01_ORDER_OBSERVATION.OBR
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        uid = job.study.study_instance_uid
    assert obr.obr_2.to_er7() == "ACC-HL7" and obr.obr_20.to_er7() == uid
    assert obr.obr_25.to_er7() == "F"
    observations = [g.OBX for g in result.ORU_R01_ORDER_OBSERVATION.ORU_R01_OBSERVATION]
    assert {o.obx_4.to_er7() for o in observations} >= {"1", "2"}
    assert "Highest Lung-RADS category 4A" in unescape(observations[-1].obx_5.to_er7())

    with TestClient(create_app(settings, db), client=("127.0.0.1", 1)) as client:
        page = client.get(f"/api/studies/{uid}").json()
    shown = [d for d in page["deliveries"] if d["kind"] == "hl7"]
    assert shown and shown[0]["last_status"] == "AA" and shown[0]["state"] == "delivered"


@pytest.mark.parametrize(
    ("issuer", "mrn_system", "authority"),
    [
        ("1.2.840.4711", "urn:oid:9.9", "&1.2.840.4711&ISO"),  # the issuer names the system
        ("HOSP-A", "urn:oid:1.2.3.4", "HOSP-A&1.2.3.4&ISO"),  # local issuer + the setting
    ],
)
def test_pid3_authority_and_standard_codes_reach_the_peer(
    listener: Listener,
    db: Database,
    settings: Settings,
    issuer: str,
    mrn_system: str,
    authority: str,
) -> None:
    settings = _settings(settings, listener.port).model_copy(update={"mrn_system": mrn_system})
    job_id = _job(db, settings, issuer=issuer)
    assert _dispatch(db, settings, job_id).state == "delivered"
    (message,) = listener.received
    result = message.ORU_R01_PATIENT_RESULT
    assert result.ORU_R01_PATIENT.PID.pid_3.to_er7() == f"HL7-1^^^{authority}^MR"
    observations = [g.OBX for g in result.ORU_R01_ORDER_OBSERVATION.ORU_R01_OBSERVATION]
    by_code = {(o.obx_4.to_er7(), o.obx_3.ce_1.to_er7()): o for o in observations}
    study_category = by_code[("", "RID50134")]
    assert study_category.obx_3.ce_3.to_er7() == "RADLEX"
    assert study_category.obx_3.ce_4.to_er7() == "1362105002"
    assert study_category.obx_5.to_er7() == "RID50139^Lung-RADS 4A^RADLEX"
    assert by_code[("1", "RID46010")].obx_5.to_er7().startswith("RID5741^solid^RADLEX")


def test_amended_result_goes_as_corrected(
    listener: Listener, db: Database, settings: Settings
) -> None:
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings, version=2)
    assert _dispatch(db, settings, job_id).state == "delivered"
    order = listener.received[-1].ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert order.OBR.obr_25.to_er7() == "C"
    assert {g.OBX.obx_11.to_er7() for g in order.ORU_R01_OBSERVATION} == {"C"}


def test_application_error_is_retried_then_fails_with_the_reason(
    listener: Listener, db: Database, settings: Settings
) -> None:
    listener.behaviours = ["AE"]
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id)
    assert row.state == "pending" and row.last_status == "AE"
    assert "AE & reason" in row.last_error
    row = _dispatch(db, settings, job_id, rounds=2)
    assert row.state == "failed" and row.attempts == 3 and len(listener.received) == 3
    assert row.last_error.startswith("gave up after 3 attempts") and "AE & reason" in row.last_error


def test_application_error_then_accept(
    listener: Listener, db: Database, settings: Settings
) -> None:
    listener.behaviours = ["AE", "AA"]
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id, rounds=2)
    assert row.state == "delivered" and row.attempts == 2 and row.last_status == "AA"
    ids = {m.msh.msh_10.to_er7() for m in listener.received}
    assert ids == {job_id[:20]}  # the same control id on the retry


def test_reject_fails_at_once(listener: Listener, db: Database, settings: Settings) -> None:
    listener.behaviours = ["AR"]
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id)
    assert row.state == "failed" and row.attempts == 1 and row.last_status == "AR"
    assert row.last_error.startswith("refused") and "AR & reason" in row.last_error


def test_peer_down_is_retried(db: Database, settings: Settings) -> None:
    settings = _settings(settings, free_port())  # nothing listens there
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id)
    assert row.state == "pending" and row.last_status == "no-connection"
    assert "cannot connect" in row.last_error


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ("slow", "timeout"),
        ("garbled", "bad-frame"),
        ("huge", "too-large"),
        ("silent-close", "closed"),
    ],
)
def test_slow_or_hostile_peers_cost_bounded_time_and_are_retried(
    listener: Listener, db: Database, settings: Settings, behaviour: str, status: str
) -> None:
    listener.behaviours = [behaviour]
    settings = _settings(settings, listener.port)
    job_id = _job(db, settings)
    started = datetime.now(UTC)
    row = _dispatch(db, settings, job_id)
    assert (datetime.now(UTC) - started).total_seconds() < 5
    assert row.state == "pending" and row.last_status == status, row.last_error


def test_reply_in_one_byte_pieces_is_read_whole(
    listener: Listener, db: Database, settings: Settings
) -> None:
    listener.behaviours = ["pieces"]
    settings = _settings(settings, listener.port).model_copy(
        update={"hl7_ack_timeout_seconds": 10.0}
    )
    job_id = _job(db, settings)
    row = _dispatch(db, settings, job_id)
    assert row.state == "delivered" and row.last_status == "AA"
