"""HL7 v2.5.1 ORU^R01: the message parsed back by hl7apy, escaping, ACK verdicts, MLLP framing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from services.core.contracts import Finding
from services.core.settings import Settings
from services.reporter.hl7 import ack, mllp, oru
from services.reporter.hl7.text import components, escape, unescape

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


def _finding(**overrides: object) -> Finding:
    values: dict[str, object] = {
        "center_mm": (-60.5, 20.25, -110.0),
        "diameter_mm": 7.5,
        "long_axis_mm": 8.2,
        "short_axis_mm": 6.8,
        "volume_mm3": 220.9,
        "mean_hu": -20.0,
        "kind": "solid",
        "confidence": 0.93,
        "lung_rads": "3",
    }
    return Finding.model_validate(values | overrides)


def _input(**overrides: object) -> oru.OruInput:
    values: dict[str, object] = {
        "job_id": "0123456789abcdef0123456789abcdef",
        "patient_id": "MRN|42^x",
        "patient_name": "O'Brien&Sons^Mary^Ann^Dr^PhD",
        "birth_date": "19600102",
        "sex": "F",
        "accession_number": "ACC-7",
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "study_date": "20260301",
        "study_time": "101500.25",
        "reported_at": NOW,
        "findings": [_finding(), _finding(diameter_mm=34.0, lung_rads="4B", finding_type="mass")],
        "model": "nodule-seg 1.0.0",
    }
    return oru.OruInput(**(values | overrides))  # type: ignore[arg-type]


def _parsed(data: oru.OruInput) -> object:
    endpoints = oru.Endpoints("NODULEFLOW", "RADIOLOGY", "RIS", "GENERAL HOSPITAL")
    text = oru.build_oru(data, endpoints, now=NOW).to_er7()
    return parse_message(text, validation_level=2, find_groups=True)


def test_oru_parses_back_with_patient_order_and_observations() -> None:
    message = _parsed(_input())
    msh = message.msh  # type: ignore[attr-defined]
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_10.to_er7() == "0123456789abcdef0123"
    assert msh.msh_5.to_er7() == "RIS" and msh.msh_6.to_er7() == "GENERAL HOSPITAL"
    result = message.ORU_R01_PATIENT_RESULT  # type: ignore[attr-defined]
    pid = result.ORU_R01_PATIENT.PID
    assert unescape(pid.pid_3.cx_1.to_er7()) == "MRN|42^x"
    assert pid.pid_3.cx_5.to_er7() == "MR"
    name = pid.pid_5
    assert unescape(name.xpn_1.to_er7()) == "O'Brien&Sons"
    assert (name.xpn_2.to_er7(), name.xpn_4.to_er7(), name.xpn_5.to_er7()) == ("Mary", "PhD", "Dr")
    assert pid.pid_7.to_er7() == "19600102" and pid.pid_8.to_er7() == "F"
    order = result.ORU_R01_ORDER_OBSERVATION
    obr = order.OBR
    assert obr.obr_2.to_er7() == "ACC-7" and obr.obr_18.to_er7() == "ACC-7"
    assert obr.obr_20.to_er7() == "1.2.826.0.1.3680043.8.498.1"
    assert obr.obr_4.to_er7() == "24627-2^CT Chest^LN"
    assert obr.obr_7.to_er7() == "20260301101500" and obr.obr_25.to_er7() == "F"
    obx = [group.OBX for group in order.ORU_R01_OBSERVATION]
    assert [o.obx_1.to_er7() for o in obx] == [str(i) for i in range(1, len(obx) + 1)]
    assert obx[0].obx_5.to_er7() == "1.2.826.0.1.3680043.8.498.1"
    assert obx[1].obx_3.to_er7() == (
        "RID50134^Lung-RADS assessment^RADLEX"
        "^1362105002^Lung Imaging Reporting and Data System category^SCT"
    )
    assert obx[1].obx_5.to_er7() == "RID50140^Lung-RADS 4B^RADLEX"  # study category
    by_finding = {(o.obx_4.to_er7(), o.obx_3.to_er7().split("^")[0]): o.obx_5.to_er7() for o in obx}
    assert by_finding[("1", "81827009")] == "7.5"
    assert by_finding[("2", "81827009")] == "34.0"
    assert by_finding[("2", "121071")] == "4147007^Mass^SCT"
    assert by_finding[("1", "121071")] == "27925004^Nodule^SCT"
    assert by_finding[("2", "RID50134")] == "RID50140^Lung-RADS 4B^RADLEX"
    assert by_finding[("1", "RID50134")] == "RID50138^Lung-RADS 3^RADLEX"
    assert by_finding[("1", "RID46010")] == "RID5741^solid^RADLEX^35702001^Solid^SCT"
    assert by_finding[("1", "confidence")] == "0.93"  # no standard code: private scheme
    summary = obx[-1]
    assert summary.obx_2.to_er7() == "TX"
    assert summary.obx_3.to_er7() == "19005-8^Radiology Imaging study [Impression] (narrative)^LN"
    assert "Highest Lung-RADS category 4B" in unescape(summary.obx_5.to_er7())
    assert {o.obx_11.to_er7() for o in obx} == {"F"}


def test_kinds_and_categories_without_a_standard_code() -> None:
    findings = [
        _finding(kind="part-solid", lung_rads="S"),
        _finding(kind="ground-glass", lung_rads="4X"),
    ]
    message = _parsed(_input(findings=findings))
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION  # type: ignore[attr-defined]
    obx = [group.OBX for group in order.ORU_R01_OBSERVATION]
    values = {(o.obx_4.to_er7(), o.obx_3.to_er7().split("^")[0]): o.obx_5.to_er7() for o in obx}
    assert values[("1", "RID46010")] == "RID46011^partially solid^RADLEX"
    assert values[("1", "RID50134")] == "S^Lung-RADS S^99NDLFLW"
    assert values[("2", "RID46010")] == (
        "RID46016^non-solid^RADLEX^1217294009^Ground glass opacity^SCT"
    )
    assert values[("", "RID50134")] == "RID50141^Lung-RADS 4X^RADLEX"  # study: 4X over S


@pytest.mark.parametrize(
    ("issuer", "system", "expected"),
    [
        ("", "", "MRN-1^^^^MR"),
        ("1.2.840.99", "urn:oid:1.2.840.99", "MRN-1^^^&1.2.840.99&ISO^MR"),
        ("HOSP-A", "urn:oid:1.2.3", "MRN-1^^^HOSP-A&1.2.3&ISO^MR"),
        ("HOSP-A", "", "MRN-1^^^HOSP-A^MR"),
        ("", "https://h.example/mrn?a=1&b=2", "MRN-1^^^&https://h.example/mrn?a=1\\T\\b=2&URI^MR"),
    ],
)
def test_pid3_carries_the_assigning_authority(issuer: str, system: str, expected: str) -> None:
    message = _parsed(_input(patient_id="MRN-1", patient_id_issuer=issuer, mrn_system=system))
    pid = message.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID  # type: ignore[attr-defined]
    assert pid.pid_3.to_er7() == expected
    authority = pid.pid_3.cx_4
    if system.startswith("urn:oid:"):
        assert authority.hd_2.to_er7() == system.removeprefix("urn:oid:")
        assert authority.hd_3.to_er7() == "ISO"
    if issuer == "HOSP-A":
        assert authority.hd_1.to_er7() == "HOSP-A"
    if "https" in system:
        assert unescape(authority.hd_2.to_er7()) == system


def test_amended_result_is_sent_as_corrected() -> None:
    message = _parsed(_input(corrected=True))
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION  # type: ignore[attr-defined]
    assert order.OBR.obr_25.to_er7() == "C"
    assert {g.OBX.obx_11.to_er7() for g in order.ORU_R01_OBSERVATION} == {"C"}
    assert "Corrected result" in unescape(order.ORU_R01_OBSERVATION[-1].OBX.obx_5.to_er7())


def test_no_findings_and_missing_header_values() -> None:
    message = _parsed(_input(findings=[], accession_number="", patient_name="", sex="X"))
    result = message.ORU_R01_PATIENT_RESULT  # type: ignore[attr-defined]
    assert result.ORU_R01_PATIENT.PID.pid_8.to_er7() == "U"
    observations = result.ORU_R01_ORDER_OBSERVATION.ORU_R01_OBSERVATION
    assert len(observations) == 3  # study UID, category 1, summary
    with pytest.raises(ValueError, match="Study Instance UID"):
        _input(study_instance_uid="")


def test_escaping_round_trips_and_drops_control_characters() -> None:
    text = "a|b^c&d~e\\f\rg"
    assert escape(text) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g"
    assert unescape(escape(text)) == "a|b^c&d~e\\f g"
    assert components("x^y", "", "z", "", "") == "x\\S\\y^^z"


def _ack(code: str, control: str = "CTRL1", extra: str = "") -> bytes:
    return (
        "MSH|^~\\&|RIS|HOSP|NODULEFLOW|RAD|20260302103000||ACK^R01^ACK|A1|P|2.5.1\r"
        f"MSA|{code}|{control}|{extra}\r"
    ).encode()


def test_ack_codes_decide_the_delivery() -> None:
    accepted = ack.classify_ack(_ack("AA"), "CTRL1")
    assert accepted.ok and accepted.status == "AA" and "CTRL1" in accepted.detail
    error = ack.classify_ack(_ack("AE", extra="Disk \\T\\ tape full"), "CTRL1")
    assert not error.ok and error.retry and error.detail.endswith("Disk & tape full")
    rejected = ack.classify_ack(_ack("AR", extra="Unknown patient"), "CTRL1")
    assert not rejected.ok and not rejected.retry and "Unknown patient" in rejected.detail
    err_segment = _ack("AE") + b"ERR|||207^Application internal error^HL70357|E||||Try later\r"
    assert "Try later" in ack.classify_ack(err_segment, "CTRL1").detail


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage",
        b"\xff\xfe\x00binary",
        _ack("AA", control="OTHER"),
        b"MSH|^~\\&|RIS|HOSP|||20260302||ACK|A1|P|2.5.1\r",
        _ack("ZZ"),
    ],
)
def test_replies_that_are_not_our_ack_are_retried(reply: bytes) -> None:
    outcome = ack.classify_ack(reply, "CTRL1")
    assert not outcome.ok and outcome.retry and outcome.status == "bad-ack"


def test_reply_reader_handles_partial_garbled_and_huge_replies() -> None:
    reader = mllp.ReplyReader()
    block = mllp.frame(b"MSH|x\rMSA|AA|1\r")
    assert [reader.feed(block[i : i + 1]) for i in range(len(block) - 1)] == [None] * (
        len(block) - 1
    )
    assert reader.feed(block[-1:]) == b"MSH|x\rMSA|AA|1\r"
    with pytest.raises(mllp.MllpError, match="does not start"):
        mllp.ReplyReader().feed(b"HTTP/1.1 400 Bad Request\r\n")
    huge = mllp.ReplyReader(max_reply=1000)
    with pytest.raises(mllp.MllpError, match="larger than"):
        for _ in range(20):
            huge.feed(b"\x0b" + b"A" * 100 if not huge.buffer else b"A" * 100)
    with pytest.raises(ValueError, match="framing"):
        mllp.frame(b"a\x1cb")


def test_peer_addresses() -> None:
    assert mllp.Peer.parse("ris.example:2575") == mllp.Peer("ris.example", 2575)
    assert mllp.Peer.parse("[::1]:2575") == mllp.Peer("::1", 2575)
    for bad in ("ris", "ris:", ":2575", "ris:99999", "ris:x"):
        with pytest.raises(ValueError, match="host:port"):
            mllp.Peer.parse(bad)


def test_a_malformed_peer_setting_stops_the_reporter_at_start(tmp_path: Path) -> None:
    from services.core.db import Database
    from services.reporter.delivery.senders import default_senders

    settings = Settings(hl7_peer="ris-without-port")
    with pytest.raises(ValueError, match="host:port"):
        default_senders(Database(f"sqlite:///{tmp_path / 'x.db'}"), settings)
    assert "hl7" in default_senders(Database("sqlite://"), Settings(hl7_peer="ris:2575"))
