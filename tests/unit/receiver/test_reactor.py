"""``services.receiver.fast.reactor``: a plain C-STORE served on the DUL thread answers exactly
as pynetdicom's reactor does (statuses, failures, aborts, release), and everything unusual is
left to the reactor."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver import fast
from services.receiver.fast import reactor

Handler = Callable[[Any], Any]


@pytest.fixture(autouse=True)
def _quiet_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the receiver runs it (``scp.build_ae``): no debug handlers bound to PDU events."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")


def _instance(number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = number
    ds.PixelData = bytes(range(256)) * 64
    ds.Rows, ds.Columns, ds.BitsAllocated = 64, 128, 16
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@contextmanager
def _scp(handler: Handler) -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom storage SCP on a free port; yields the port and the kinds of thread the
    handler ran on (``Association``: the reactor, ``DULServiceProvider``)."""
    threads: list[str] = []

    def store(event: Any) -> Any:
        threads.append(type(threading.current_thread()).__name__)
        _ = event.dataset  # decoded, as the receiver's handler does
        return handler(event)

    ae = AE(ae_title="SCP")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    assert server is not None
    try:
        yield int(server.server_address[1]), threads
    finally:
        server.shutdown()


def _send(port: int, count: int, *, echo_at: int = -1) -> tuple[list[Any], bool, bool]:
    """``count`` C-STOREs (a C-ECHO before number ``echo_at``) over one association; the
    statuses (None where no response came), and whether it ended released / aborted."""
    ae = AE(ae_title="SCU")
    ae.dimse_timeout = 5  # (a pynetdicom SCU can miss an A-ABORT that ends its wait)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    statuses = []
    for number in range(count):
        if number == echo_at:
            assert assoc.send_c_echo().Status == 0x0000
        try:
            rsp = assoc.send_c_store(_instance(number))
        except RuntimeError:  # no longer established
            rsp = Dataset()
        statuses.append(None if "Status" not in rsp else (rsp.Status, rsp.get("ErrorComment")))
    if assoc.is_established:
        assoc.release()
    deadline = time.monotonic() + 10
    while not (assoc.is_released or assoc.is_aborted) and time.monotonic() < deadline:
        time.sleep(0.01)
    return statuses, bool(assoc.is_released), bool(assoc.is_aborted)


def _both(tmp_path: Path, handler: Handler, count: int, **kw: Any) -> tuple[Any, Any, list[str]]:
    """The same exchange against plain pynetdicom and with the fast path installed."""
    with _scp(handler) as (port, _):
        plain = _send(port, count, **kw)
    with fast.installed(tmp_path), _scp(handler) as (port, threads):
        ours = _send(port, count, **kw)
    return plain, ours, threads


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, Dataset(), "comment"], ids=str)
def test_statuses_match_pynetdicom(tmp_path: Path, status: Any) -> None:
    def handler(event: Any) -> Any:
        if isinstance(status, str):
            answer = Dataset()
            answer.Status = 0xC000
            answer.ErrorComment = "refused here"
            return answer
        if isinstance(status, Dataset):
            answer = Dataset()
            answer.Status = 0x0000
            return answer
        return status

    plain, ours, threads = _both(tmp_path, handler, 6, echo_at=3)
    assert ours == plain
    assert plain[1:] == (True, False)  # released
    assert len(threads) == 6


def test_served_on_the_dul_thread(tmp_path: Path) -> None:
    served: list[int] = []
    original = reactor._serve

    def counting(waiter: reactor.ReactorWaiter, context_id: int, msg: Any) -> None:
        served.append(msg.MessageID)
        original(waiter, context_id, msg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reactor, "_serve", counting)
        plain, ours, threads = _both(tmp_path, lambda event: 0x0000, 20)
    assert ours == plain == ([(0x0000, None)] * 20, True, False)
    # The first request may reach the queue before the reactor starts; after that the
    # DUL thread serves them (the reactor waits its turn and never runs the handler).
    assert len(served) >= 15
    assert threads.count("DULServiceProvider") == len(served)
    assert threads.count("Association") == 20 - len(served)


def test_a_raising_handler_answers_c211_as_pynetdicom(tmp_path: Path) -> None:
    def handler(event: Any) -> Any:
        raise RuntimeError("broken handler")

    plain, ours, _ = _both(tmp_path, handler, 3)
    assert ours == plain
    assert [s[0] for s in plain[0]] == [0xC211] * 3


def test_an_abort_in_the_handler_aborts_without_hanging(tmp_path: Path) -> None:
    seen: dict[int, int] = {}

    def handler(event: Any) -> Any:
        seen[id(event.assoc)] = seen.get(id(event.assoc), 0) + 1
        if seen[id(event.assoc)] == 2:  # the second request of each association
            event.assoc.abort()
        return 0x0000

    start = time.monotonic()
    plain, ours, _ = _both(tmp_path, handler, 4)
    assert time.monotonic() - start < 25
    assert ours == plain == ([(0x0000, None), None, None, None], False, True)


def test_an_exception_past_the_handler_aborts_as_pynetdicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynetdicom.service_class import StorageServiceClass

    def broken(self: Any, status: Any, rsp: Any) -> Any:
        raise RuntimeError("broken status")

    monkeypatch.setattr(StorageServiceClass, "validate_status", broken)
    start = time.monotonic()
    plain, ours, _ = _both(tmp_path, lambda event: 0x0000, 3)
    assert time.monotonic() - start < 25
    assert plain[1:] == ours[1:] == (False, True)
    assert ours[0] == plain[0]


# ------------------------------------------------------------------------ unit level


def _fake_assoc(**overrides: Any) -> SimpleNamespace:
    checkpoint = threading.Event()
    checkpoint.set()
    values: dict[str, Any] = {
        "dimse": SimpleNamespace(msg_queue=queue.Queue()),
        "dul": SimpleNamespace(to_user_queue=queue.Queue()),
        "is_established": True,
        "_kill": False,
        "_sent_release": False,
        "_sent_abort": False,
        "_reactor_checkpoint": checkpoint,
        "_accepted_cx": {1: object()},
        "acceptor": SimpleNamespace(accepted_common_extended={}),
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def _store_request() -> C_STORE:
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = "1.2.3.4.5"
    req.Priority = 2
    req.DataSet = BytesIO(b"")
    return req


def test_servable_only_plain_storage_requests() -> None:
    assert reactor.servable(_fake_assoc(), (1, _store_request()))
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = Verification
    assert not reactor.servable(_fake_assoc(), (1, echo))
    response = _store_request()
    response.MessageIDBeingRespondedTo = 1
    response.MessageID = None
    assert not reactor.servable(_fake_assoc(), (1, response))
    assert not reactor.servable(_fake_assoc(), (3, _store_request()))  # context not accepted
    paused = threading.Event()
    for assoc in (
        _fake_assoc(is_established=False),
        _fake_assoc(_kill=True),
        _fake_assoc(_sent_release=True),
        _fake_assoc(_sent_abort=True),
        _fake_assoc(_reactor_checkpoint=paused),
        _fake_assoc(acceptor=SimpleNamespace(accepted_common_extended={CTImageStorage: 1})),
    ):
        assert not reactor.servable(assoc, (1, _store_request()))
    other = _store_request()
    other.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"  # Modality Worklist: not storage
    assert not reactor.servable(_fake_assoc(), (1, other))


def test_reactor_waiter_wakes_on_message_and_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    assoc = _fake_assoc()
    waiter = reactor.ReactorWaiter(assoc)
    waiter.start()
    start = time.monotonic()
    waiter(0.001)
    assert time.monotonic() - start >= reactor.MAX_WAIT * 0.8  # nothing to do: full wait
    monkeypatch.setattr(reactor, "MAX_WAIT", 10.0)
    threading.Timer(0.01, lambda: assoc.dimse.msg_queue.put((1, "msg"))).start()
    start = time.monotonic()
    waiter(0.001)
    assert time.monotonic() - start < 5.0  # woken by the message
    assert assoc.dimse.msg_queue.get_nowait() == (1, "msg")
    assert waiter.turn.locked()  # held again once the wait is over
    waiter.stop()
    assert waiter.closed and not waiter.turn.locked()


def test_deliver_queues_while_the_reactor_holds_its_turn() -> None:
    request = _store_request()

    def receive(primitive: Any) -> None:
        assoc.dimse.msg_queue.put((1, request))

    assoc = _fake_assoc()
    assoc.dimse.receive_primitive = receive
    waiter = reactor.ReactorWaiter(assoc)
    waiter.start()  # the reactor is busy (not waiting): the DUL thread must not serve
    reactor.deliver(assoc, object())
    assert assoc.dimse.msg_queue.get_nowait() == (1, request)
    assert waiter.event.is_set() and waiter.served == 0
    waiter.stop()  # ended: nothing is served any more either
    reactor.deliver(assoc, object())
    assert assoc.dimse.msg_queue.get_nowait() == (1, request)
    assert waiter.served == 0


def test_deliver_keeps_order_behind_a_queued_message(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(reactor, "_serve", lambda waiter, cx, msg: served.append(msg))
    first, second = _store_request(), _store_request()

    def receive(primitive: Any) -> None:
        assoc.dimse.msg_queue.put((1, primitive))

    assoc = _fake_assoc()
    assoc.dimse.receive_primitive = receive
    waiter = reactor.ReactorWaiter(assoc)
    waiter.start()
    waiter.turn.release()  # the reactor waits
    assoc.dimse.msg_queue.put((1, first))  # (reached the queue before, e.g. pre-reactor)
    reactor.deliver(assoc, second)
    assert served == []  # queued behind the first, for the reactor
    assert [assoc.dimse.msg_queue.get_nowait() for _ in range(2)] == [(1, first), (1, second)]
    reactor.deliver(assoc, second)
    assert served == [second] and assoc.dimse.msg_queue.empty()
    assert not waiter.turn.locked()
