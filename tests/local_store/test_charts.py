"""local_store.charts: the one chart module of the web UI and the HTML report (issue 12)."""

from __future__ import annotations

import re

import pytest

from local_store.charts import AXIS_PX, bar_chart_svg, hbar_chart_svg, nice_ticks


@pytest.mark.parametrize(("peak", "ticks"), [
    # 0.00452 / 4 = 0.00113 -> the next step of 1, 2, 5 x 10^k is 0.002; ceil(0.00452 / 0.002) = 3 steps
    (0.00452, [0.0, 0.002, 0.004, 0.006]),
    # 100 / 4 = 25 -> 50; ceil(100 / 50) = 2 steps
    (100.0, [0.0, 50.0, 100.0]),
    # 7 / 4 = 1.75 -> 2; ceil(7 / 2) = 4 steps
    (7.0, [0.0, 2.0, 4.0, 6.0, 8.0]),
    # 1 / 4 = 0.25 -> 0.5; ceil(1 / 0.5) = 2 steps
    (1.0, [0.0, 0.5, 1.0]),
    (0.0, [0.0, 1.0]),          # nothing to draw: one empty unit
])
def test_axis_ticks_are_round_numbers(peak: float, ticks: list[float]) -> None:
    assert nice_ticks(peak) == ticks


def test_a_stacked_bar_chart_escapes_its_labels_and_labels_at_most_five_bars() -> None:
    labels = [f"11-{d:02d}" for d in range(1, 31)]
    svg = bar_chart_svg(labels, {"scope_1": [0.001] * 30, "scope_2": [0.00352] * 30},
                        {"scope_1": "#c0504d", "scope_2": "#4f81bd"}, "<t> & title", {"scope_1": "S1", "scope_2": "S2"})
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "<script" not in svg
    assert "&lt;t&gt; &amp; title" in svg and "<t>" not in svg
    # 30 bars, a label every ceil(30 / 5) = 6th: 11-01, 11-07, 11-13, 11-19, 11-25
    shown = re.findall(r'text-anchor="middle" class="axis" font-size="\d+">([^<]+)<', svg)
    assert shown == ["11-01", "11-07", "11-13", "11-19", "11-25"]
    # the stack peaks at 0.001 + 0.00352 = 0.00452: ticks 0, 0.002, 0.004, 0.006 (never 0.00452 on the axis)
    axis = re.findall(r'text-anchor="end" class="axis" font-size="\d+">([^<]+)<', svg)
    assert axis == ["0", "0.002", "0.004", "0.006"]
    assert svg.count(f'font-size="{AXIS_PX}"') == 5 + 4 + 2     # labels, ticks, legend


def test_horizontal_bars_shorten_long_source_names() -> None:
    svg = hbar_chart_svg([("a-very-long-source-name-indeed", 2.0), ("gas", 1.0), ("tiny", 0.000054)], "by source")
    assert "a-very-long-sou…" in svg and ">2<" in svg and ">1<" in svg
    assert ">0.000054<" in svg and "e-05" not in svg, "decimals, not exponents"
