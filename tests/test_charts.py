"""The SVG charts of the usage report and the dashboard: readable as they are (values, axes, cap lines)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.daemon.charts import bar_chart, meter, nice_step, number_text, timeline

SVG = "{http://www.w3.org/2000/svg}"


def svg_of(figure: str) -> ET.Element:
    return ET.fromstring(figure[figure.index("<svg") : figure.index("</svg>") + 6])


def texts(root: ET.Element, css: str) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == css]


@given(st.floats(min_value=1e-6, max_value=1e6))
def test_nice_steps_are_round_and_cover_the_peak_in_two_to_five_ticks(peak: float) -> None:
    step = nice_step(peak)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert min(abs(mantissa - m) for m in (1.0, 2.0, 5.0, 10.0)) < 1e-6, step
    assert 2.0 - 1e-9 <= peak / step <= 5.0 + 1e-9


def test_bars_carry_their_values_an_axis_and_the_cap() -> None:
    figure = bar_chart("Spend", [("2026-12-01", 0.5), ("2026-12-02", 1.25)], unit="USD", cap=2.0)
    root = svg_of(figure)
    assert texts(root, "value") == ["0.50", "1.25"]
    assert texts(root, "label") == ["2026-12-01", "2026-12-02"]
    assert texts(root, "tick") == ["0.00", "0.50", "1.00", "1.50", "2.00"]
    (cap,) = [line for line in root.iter(f"{SVG}line") if line.get("class") == "cap"]
    assert texts(root, "cap-label") == ["cap 2.00 USD"]
    (top_tick,) = [t for t in root.iter(f"{SVG}text") if t.get("class") == "tick" and t.text == "2.00"]
    assert abs(float(cap.get("y1")) - (float(top_tick.get("y")) - 4)) < 0.2, "the cap line sits at its tick"
    assert "total 1.75 USD" in figure


@pytest.mark.parametrize("items", [[], [("only", 0.0)]])
def test_empty_and_zero_charts_still_draw_an_axis(items: list[tuple[str, float]]) -> None:
    root = svg_of(bar_chart("Nothing", items, unit="h"))
    assert texts(root, "tick")[0] == "0.00" and len(texts(root, "tick")) >= 2


def test_small_amounts_stay_visible() -> None:
    assert [number_text(v) for v in (0.0, 0.004, 0.0166, 0.5, 12.345, 1234.5)] == [
        "0.00", "0.004", "0.0166", "0.50", "12.35", "1,234",
    ]  # fmt: skip


def test_meter_says_spent_cap_and_left() -> None:
    figure = meter("Today", 3.0, 5.0)
    assert "3.00 USD spent" in figure and "cap 5.00 USD (2.00 left)" in figure
    assert "no cap" in meter("Month", 1.0, None)


def test_timeline_has_one_row_per_speaker_and_a_time_axis() -> None:
    root = ET.fromstring(timeline([(0.0, 2.0, "A"), (2.5, 9.0, "B"), (9.0, 10.0, "A")], 10.0, names={"A": "Ann"}))
    assert texts(root, "speaker") == ["Ann", "B"]
    assert sum(1 for r in root.iter(f"{SVG}rect") if r.get("class") == "turn") == 3
    assert texts(root, "tick")[:3] == ["0 s", "2 s", "4 s"]
    long = ET.fromstring(timeline([(0.0, 1800.0, "A")], 1800.0))
    assert "30 min" in texts(long, "tick")
