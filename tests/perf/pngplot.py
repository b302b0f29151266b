"""A small step chart written as PNG with Pillow (already a dependency through highdicom),
for the benchmarks' time series; no plotting library needed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
MARGIN = (60, 30, 20, 40)  # left, top, right, bottom


def nice_step(span: float, ticks: int = 6) -> float:
    """A 1, 2 or 5 × 10ⁿ step giving about ``ticks`` intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= raw)


def step_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (800, 400),
) -> Image.Image:
    """Each series a step line (value held until the next sample), the n-th lifted by 3n
    pixels so that series with equal values do not hide one another; a legend at the top."""
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError("nothing to plot")
    width, height = size
    left, top, right, bottom = MARGIN
    x_max = max(x for x, _ in points) or 1.0
    y_max = max(max(y for _, y in points), 1.0)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (width - left - right) * x / x_max,
            height - bottom - (height - top - bottom) * y / y_max,
        )

    for tick in _ticks(x_max):
        px, _ = at(tick, 0)
        draw.line([(px, top), (px, height - bottom)], fill=(230, 230, 230))
        draw.text((px - 8, height - bottom + 4), f"{tick:g}", fill="black")
    for tick in _ticks(y_max):
        _, py = at(0, tick)
        draw.line([(left, py), (width - right, py)], fill=(230, 230, 230))
        draw.text((left - 40, py - 6), f"{tick:g}", fill="black")
    draw.rectangle([(left, top), (width - right, height - bottom)], outline="black")
    draw.text((left, 4), title, fill="black")
    draw.text((width // 2 - 40, height - 18), x_label, fill="black")
    draw.text((4, top - 18), y_label, fill="black")
    legend_x = width - right - 150
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        draw.line([(legend_x, top + 10 + 14 * n), (legend_x + 20, top + 10 + 14 * n)], colour, 2)
        draw.text((legend_x + 24, top + 4 + 14 * n), name, fill=colour)
        line: list[tuple[float, float]] = []
        lift = 3 * n  # equal values of several series stay visible side by side
        for (x0, y0), (x1, _) in zip(values, [*values[1:], values[-1]], strict=True):
            line += [(px, py - lift) for px, py in (at(x0, y0), at(x1, y0))]
        if line:
            draw.line(line, fill=colour, width=2)
    return image


def _ticks(maximum: float) -> list[float]:
    step = nice_step(maximum)
    return [i * step for i in range(int(maximum / step) + 1)]


def write_step_chart(
    path: Path,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
) -> Path:
    step_chart(series, title=title, x_label=x_label, y_label=y_label).save(path, format="PNG")
    return path
