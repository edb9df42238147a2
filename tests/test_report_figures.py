"""Figures of `manyheads report`: any text in a run's names or labels draws as plain text."""

import pytest

from manyheads.report.figures import plain_text


def test_report_figures_draw_dollar_signs_as_text(tmp_path):
    from matplotlib.figure import Figure

    def draw() -> None:
        figure = Figure()
        axes = figure.subplots()
        axes.plot([0, 1], [0, 1], label=r"$\x$")
        axes.legend()
        figure.savefig(tmp_path / "f.png")

    with pytest.raises(ValueError):
        draw()  # matplotlib's math parser rejects it
    with plain_text():
        draw()
    assert (tmp_path / "f.png").stat().st_size > 0
