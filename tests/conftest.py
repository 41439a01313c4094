"""Shared test plumbing: figure lines (e.g. `reliability: crash loop 100 iterations, ... 0 lost`) that tests
record with the `figure` fixture are printed together at the end of the run, whatever pytest captured."""

import pytest

FIGURES: list[str] = []


@pytest.fixture
def figure():
    """Record a figure line to print in the run's summary."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
