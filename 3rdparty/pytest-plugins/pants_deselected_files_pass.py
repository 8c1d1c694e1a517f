"""Lets a test file whose tests are all deselected pass under `pants test`.

Pants runs pytest once per test file, and CI runs it with `-m "not slow"` (the slow tests run
in the plain pytest run before it). A file whose every test is marked slow then collects
nothing, pytest exits 5 ("no tests collected") and Pants reports the file as failed. Such a file
did what was asked of it, so it passes; a file in which pytest found no test at all, with
nothing deselected, still fails. Loaded by `[pytest] args` in pants.toml.
"""

from __future__ import annotations

import pytest


class DeselectedFilesPass:
    def __init__(self) -> None:
        self.deselected = 0

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self.deselected:
            session.exitstatus = pytest.ExitCode.OK


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(DeselectedFilesPass(), "deselected-files-pass")
