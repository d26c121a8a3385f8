"""The test suite, in layers (one directory and one marker each, applied here by directory):

* ``unit`` (tests/unit): our own pure functions and guards over the source, no server at all;
  ``.venv/bin/pytest tests/unit`` (or ``-m unit``) runs in seconds and starts nothing.
* ``contract`` (tests/contract): what the real Vault (OpenBao) server says and does, over HTTP.
* ``migration`` (tests/migration): the revisions, the engine, verify, the rewrap and the CLI
  against real PostgreSQL and a real OpenBao.
* ``reliability`` (tests/reliability): crashes, faults, concurrent writers, leaks; minutes.
* ``operator`` (tests/operator): what an operator meets: preflight, messages, the README's
  commands.

Run one layer by its directory or its marker (``.venv/bin/pytest -m "not reliability"``).
Shared fixtures and helpers live in tests/support (real PostgreSQL, a real OpenBao, the
migration run as operators do, seeding, the fault proxy); the plugins below load the fixtures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.db_fixtures",
    "tests.support.vault_fixtures",
    "tests.support.migration_fixtures",
    "tests.support.replica",
]

#: The layers: a directory of tests/ and the marker its tests carry.
LAYERS = ("unit", "contract", "migration", "reliability", "operator")

_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its layer (the directory under tests/ it lives in)."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(autouse=True)
def _logging_levels_restored() -> Iterator[None]:
    """Every test starts with the logger levels the session started with.

    An in-process alembic run configures logging from its ini file (``fileConfig``), some tests
    at DEBUG; left in place, a later test would capture records its own code never asked for
    (a unit test counting warnings saw a DEBUG line of an earlier test's level).
    """
    saved = {logger: (logger.level, logger.propagate, logger.disabled) for logger in _loggers()}
    yield
    for logger in _loggers():
        level, propagate, disabled = saved.get(logger, (logging.NOTSET, True, False))
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def _loggers() -> list[logging.Logger]:
    """The root logger and every logger created so far (not the hierarchy's placeholders)."""
    found = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger(), *(lg for lg in found if isinstance(lg, logging.Logger))]
