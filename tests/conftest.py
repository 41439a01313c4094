"""Shared test plumbing: figure lines (e.g. `reliability: crash loop 100 iterations, ... 0 lost`) that tests
record with the `figure` fixture are printed together at the end of the run, whatever pytest captured.

Under CI (`CI` set, as .ci/run does) hypothesis draws the same examples every run, so a run's result depends on
the code alone; elsewhere it draws new ones each time and keeps failing examples in .hypothesis/ to replay."""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

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
