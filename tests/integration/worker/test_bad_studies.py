"""V1–V4: unusable studies end in the right state with a clear reason; the worker lives on.

One worker process takes, in this order: an MR series, a 3-slice CT, a CT with a truncated
file, a decompression bomb (65535×65535 declared, a few bytes stored), an unparseable
message, a JPEG 2000 and a JPEG-LS copy of a CT, and the uncompressed original last.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, MRImageStorage

from services.core.messages import INFERENCE_QUEUE, STUDY_READY
from tests.integration.worker.harness import Node, clone_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINAL = ("reporting", "failed", "skipped")


def _rewrite(paths: list[Path], edit) -> list[Path]:  # type: ignore[no-untyped-def]
    for path in paths:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _mr(ds: pydicom.Dataset) -> None:
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage


def _bomb(ds: pydicom.Dataset) -> None:
    ds.Rows = ds.Columns = 65535
    ds.PixelData = b"\x00" * 64


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_bad_studies_end_with_reasons_and_do_not_block(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    studies: dict[str, list[Path]] = {
        "mr": _rewrite(clone_study(chest_files, tmp_path / "mr"), _mr),
        "three": clone_study(chest_files[:3], tmp_path / "three"),
        "truncated": clone_study(chest_files, tmp_path / "truncated"),
        "bomb": _rewrite(clone_study(chest_files[:8], tmp_path / "bomb"), _bomb),
        "j2k": _rewrite(
            clone_study(chest_files, tmp_path / "j2k"), lambda ds: ds.compress(JPEG2000Lossless)
        ),
        "jls": _rewrite(
            clone_study(chest_files, tmp_path / "jls"), lambda ds: ds.compress(JPEGLSLossless)
        ),
        "plain": clone_study(chest_files, tmp_path / "plain"),
    }
    _truncate(sorted(studies["truncated"])[20])
    assert pydicom.dcmread(studies["j2k"][0]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    jobs = {}
    for name, files in studies.items():
        if name == "j2k":  # a message nobody can parse, between two studies
            node.broker.publish(STUDY_READY, "{not json", "garbage")
        jobs[name] = node.submit(files).job_id
    worker = node.worker("bad")
    ended = {name: node.wait_state(job_id, *FINAL) for name, job_id in jobs.items()}
    outcome = {name: (job.state, job.reason.split(":")[0]) for name, job in ended.items()}
    assert outcome == {
        "mr": ("skipped", "not-ct"),
        "three": ("skipped", "too-few-slices"),
        "truncated": ("failed", "corrupt-pixel-data"),
        "bomb": ("failed", "image-too-large"),
        "j2k": ("reporting", ""),
        "jls": ("reporting", ""),
        "plain": ("reporting", ""),
    }, {name: job.reason for name, job in ended.items()}
    assert worker.proc.poll() is None, worker.tail()
    assert _peak_rss_mb(worker.proc.pid) < 1500

    def summary(name: str) -> list[tuple[object, ...]]:
        return [
            (f.index, f.center_mm, f.diameter_mm, f.volume_mm3, f.mean_hu, f.mask)
            for f in node.findings(jobs[name])
        ]

    assert summary("plain")
    assert summary("j2k") == summary("plain")
    assert summary("jls") == summary("plain")
    results = {r.job_id: r for r in node.results()}
    assert sorted(results) == sorted(jobs.values())
    assert results[jobs["mr"]].status == "skipped"
    assert results[jobs["bomb"]].status == "failed"
    assert results[jobs["bomb"]].reason == ended["bomb"].reason
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 0
    assert node.broker.queue_depth(INFERENCE_QUEUE + ".dead") == 1
