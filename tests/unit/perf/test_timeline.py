"""The benchmarks' pure parts: stage arithmetic, anchors, memory growth, the PNG chart."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from tests.perf.node import machine_cpu, parse_status
from tests.perf.pngplot import nice_step, write_step_chart
from tests.perf.timeline import (
    STAGES,
    StudyTimes,
    anchor_ratios,
    claim_times,
    cpu_bound_ratio,
    epoch,
    growth,
    per_hour,
    slowest_non_inference,
    stages,
    totals,
    value_at,
)


def _times() -> StudyTimes:
    return StudyTimes(
        last_ack=100.0,
        complete=102.5,
        queued=102.6,
        analysis_start=102.8,
        analysis_end=117.8,
        report_start=118.0,
        done=119.5,
        sr_in_pacs=119.9,
        all_in_pacs=120.4,
        fhir_readable=119.7,
    )


def test_stages_are_consecutive_and_add_up_to_the_total() -> None:
    times = _times()
    steps = stages(times)
    assert [name for name, _ in steps] == [name for name, _, _ in STAGES]
    assert sum(s for _, s in steps) == pytest.approx(times.all_in_pacs - times.last_ack)
    assert dict(steps)["completion wait"] == pytest.approx(2.5)
    assert totals(times)["last image → SR in Orthanc"] == pytest.approx(19.9)
    assert totals(times)["last image → FHIR report readable"] == pytest.approx(19.7)


def test_slowest_stage_leaves_out_the_analysis() -> None:
    name, seconds = slowest_non_inference(_times())
    assert name == "completion wait"
    assert seconds == pytest.approx(2.5)


def test_anchor_ratios() -> None:
    ratios = list(anchor_ratios(2.5).values())
    assert ratios == pytest.approx([0.5, 2.5 / 60])


def test_epoch_reads_naive_timestamps_as_utc() -> None:
    aware = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    assert epoch(aware.replace(tzinfo=None)) == epoch(aware)
    other = aware.astimezone(timezone(timedelta(hours=2)))
    assert epoch(other) == epoch(aware)


def test_claim_times_from_worker_timings() -> None:
    assert claim_times(10.0, {"queued": 0.5, "load": 0.1, "total": 12.0}) == (10.6, 22.5)
    with pytest.raises(ValueError, match="queued/load/total"):
        claim_times(10.0, {"queued": 0.5})


def test_growth_between_two_moments() -> None:
    samples = [(0.0, 100.0), (5.0, 200.0), (10.0, 210.0), (20.0, 220.0)]
    assert value_at(samples, 4.0) == 200.0
    assert value_at(samples, 99.0) == 220.0  # after the last sample: the last one
    assert growth(samples, 5.0, 20.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        value_at([], 1.0)
    with pytest.raises(ValueError):
        growth([(0.0, 0.0)], 0.0, 0.0)


def test_per_hour() -> None:
    assert per_hour(20, 360.0) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        per_hour(1, 0.0)


def test_parse_status_reads_rss_and_peak_in_bytes() -> None:
    text = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t4\n"
    assert parse_status(text) == {"VmHWM": 2048 * 1024, "VmRSS": 1024 * 1024}
    with pytest.raises(ValueError, match="unit"):
        parse_status("VmRSS:\t1 MB\n")


def test_nice_steps() -> None:
    assert [nice_step(x) for x in (0.5, 7.0, 60.0, 312.0)] == pytest.approx([0.1, 2, 10, 100])


def test_step_chart_is_a_png_with_the_lines_drawn(tmp_path: Path) -> None:
    path = write_step_chart(
        tmp_path / "depth.png",
        {"queued": [(0.0, 0.0), (5.0, 12.0), (30.0, 0.0)]},
        title="queue depth",
        x_label="seconds",
        y_label="jobs",
    )
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG"
    assert image.size == (800, 400)
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 16) or []}
    assert (31, 119, 180) in colours  # the first series' colour
    with pytest.raises(ValueError, match="nothing"):
        write_step_chart(tmp_path / "x.png", {}, title="", x_label="", y_label="")


def test_machine_cpu_counts_idle_and_iowait_as_not_busy() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    text = f"cpu  {hz} {hz} {hz} {3 * hz} {hz} 0 {hz} 0 0 0\\ncpu0 1 2 3\\n"
    assert machine_cpu(text) == (4.0, 8.0)


def test_cpu_bound_ratio_is_the_measured_ratio_when_the_machine_is_the_limit() -> None:
    # 20 studies, the pipeline alone 6.6 s each; the burst keeps 2 cores 96 % busy for
    # 144 s: 276.5 CPU seconds, 13.8 per study.
    studies, anchor, cores, busy, elapsed = 20, 6.6, 2, 0.96, 144.0
    per_study = cores * busy * elapsed / studies
    measured = anchor * studies / elapsed
    assert cpu_bound_ratio(cores, busy, anchor, per_study) == pytest.approx(measured)
    assert cpu_bound_ratio(2, 0.96, 3.8, 8.6) == pytest.approx(0.848, abs=1e-3)
    # services that cost less leave more of the machine to the analysis
    assert cpu_bound_ratio(2, 0.96, 3.8, 8.1) > 0.90
    with pytest.raises(ValueError):
        cpu_bound_ratio(2, 0.0, 3.8, 8.6)
