"""``xvit list``: one aligned line per entry (column width from each section's longest name),
an indented paper line, plain text without RST or Markdown markup."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import xvit
from xvit.cli import main
from xvit.data import datasets


def _sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    for line in output.splitlines():
        if not line.startswith(" "):
            sections[line.rstrip(":")] = []
        else:
            sections[list(sections)[-1]].append(line)
    return sections


@pytest.fixture
def long_entries():
    """A dataset and an alias with long names and marked-up summaries, removed afterwards."""

    class Marked:
        """Images in ``Folder(root)`` order; see :class:`~xvit.data.Sample` and `docs`."""

        paper = "Someone, A `Marked` Paper, 2024"

    datasets.register("a-dataset-with-a-long-name", Marked)
    xvit.model_aliases.register("an-alias-longer-than-the-others", "timm:vit_tiny_patch16_224")
    yield
    datasets.unregister("a-dataset-with-a-long-name")
    xvit.model_aliases.unregister("an-alias-longer-than-the-others")


def test_list_columns_align_per_section_and_text_is_plain(long_entries) -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    assert "`" not in result.output
    assert "Images in Folder(root) order; see Sample and docs." in result.output
    sections = _sections(result.output)
    assert {"methods", "metrics", "datasets", "model aliases"} <= set(sections)
    for title, lines in sections.items():
        entries = [line for line in lines if not line.startswith("   ")]
        names = [line.split()[0] for line in entries]
        width = max(len(name) for name in names)
        for line, name in zip(entries, names):
            assert re.match(rf"  {re.escape(name)} +\S", line), line
            assert line[2 + width : 4 + width] == "  " and line[4 + width] != " ", (title, line)
        papers = [line for line in lines if line.startswith("   ")]
        for line in papers:
            assert line.startswith(" " * (4 + width) + "  paper: "), (title, line)
    methods = sections["methods"]
    assert len(methods) == 2 * len(xvit.list_methods())  # one line each plus its paper
    assert any("paper: Someone, A Marked Paper, 2024" in line for line in sections["datasets"])


def test_list_metrics_marks_the_expensive_ones_with_their_cost() -> None:
    from xvit.metrics import Metric, MetricResult, get_metric, list_metrics, metrics

    class Costly(Metric):
        """Scores each map by explaining it again many times."""

        name = "costly-example"
        expensive = True
        cost = "one explanation per randomised layer and image."
        paper = "None (a test)"

        def score(self, batch):
            return MetricResult(self.name, batch.saliency.flatten(1).amax(1).double())

    metrics.register("costly-example", Costly)
    try:
        result = CliRunner().invoke(main, ["list", "metrics"])
    finally:
        metrics.unregister("costly-example")
    assert result.exit_code == 0, result.output
    sections = _sections(result.output)
    assert list(sections) == ["metrics"]  # only the section asked for
    entries = {line.split()[0]: line for line in sections["metrics"] if line[2] != " "}
    assert entries["costly-example"].endswith(
        "Expensive, runs only when named or with --metrics all: one explanation per "
        "randomised layer and image."
    )
    for name in list_metrics():
        assert ("Expensive" in entries[name]) == get_metric(name).expensive, name
