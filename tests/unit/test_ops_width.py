"""Tables sized to the terminal (issue 13): the fitting, and where the width comes from."""

from __future__ import annotations

import io

import pytest

from daemon.ops import render

ROWS = [[10001, "Database down in the eu-west cluster, replicas lagging", "Logged", 1]]
HEADERS = ["NUMBER", "SUBJECT", "STATUS", "PRIO"]


def test_no_width_keeps_every_column_whole() -> None:
    text = render.table(HEADERS, ROWS, width=None)
    assert ROWS[0][1] in text and "…" not in text


def test_a_narrow_width_cuts_the_widest_text_column_first() -> None:
    text = render.table(HEADERS, ROWS, width=40)
    lines = text.splitlines()
    assert all(len(line) <= 40 for line in lines)
    assert lines[0].split() == HEADERS  # headers whole
    assert lines[1].lstrip().startswith("10001  Database") and "…" in lines[1]
    assert lines[1].endswith("Logged     1")  # short columns and numbers untouched


def test_too_narrow_stops_at_headers_and_numbers() -> None:
    text = render.table(HEADERS, ROWS, width=10)
    first, row = text.splitlines()
    assert first.split() == HEADERS
    assert row.split()[0] == "10001" and row.split()[-1] == "1"


def test_output_width_from_columns_terminal_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "55")
    assert render.output_width() == 55
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a pipe or a file: no fitting
    assert render.output_width() is None
    assert "…" not in render.table(HEADERS, ROWS)
