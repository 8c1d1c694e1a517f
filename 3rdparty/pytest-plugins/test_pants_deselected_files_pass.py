import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SLOW_ONLY = """
import pytest

@pytest.mark.slow
def test_slow():
    pass
"""


@pytest.fixture(autouse=True)
def plugin_importable(monkeypatch):
    """The child pytest imports the plugin by name (-p), from this folder."""
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), inherited])))


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_file=source)
    return pytester.runpytest_subprocess("-p", "pants_deselected_files_pass", *args)


def test_a_file_whose_tests_are_all_deselected_passes(pytester):
    result = run(pytester, SLOW_ONLY, "-m", "not slow")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(deselected=1)


def test_a_file_without_tests_still_fails(pytester):
    assert run(pytester, "x = 1\n").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_failures_are_kept(pytester):
    result = run(pytester, SLOW_ONLY + "\ndef test_fails():\n    assert False\n", "-m", "not slow")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
