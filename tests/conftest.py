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


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (tests/pg.py); each test takes a database of its own."""
    from pg import PostgresServer, pg_bin_dir
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.new_database()
