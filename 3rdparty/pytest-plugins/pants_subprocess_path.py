"""Lets a test's child Python processes import first-party code under `pants test`, from any folder.

Pants puts the source roots (packages/*/src, ...) on sys.path through PEX_EXTRA_SYS_PATH, as
paths relative to the sandbox. The test runs in a Pex venv, which moves that variable to
__PEX_EXTRA_SYS_PATH__ for its children, and the venv's PEX_EXTRA_SYS_PATH.pth appends those
entries to the sys.path of every process that the venv's Python starts (`sys.executable -c ...`,
`torchrun -m vpp...`, a server script). Relative, they miss in a child started in another folder
(a tmp_path), so they are made absolute here. They stay after site-packages, as in the test
process, so that children too import vpp.runtime from the wheel Pants built (with its compiled
library) rather than from the loose sources. Loaded by `[pytest] args` in pants.toml; plain
pytest never loads it.
"""

from __future__ import annotations

import os

# The first is the venv's name for it in the test process, the second Pex's own (kept in case
# a test runs outside a Pex venv).
VARIABLES = ("__PEX_EXTRA_SYS_PATH__", "PEX_EXTRA_SYS_PATH")


def pytest_configure(config: object) -> None:
    for variable in VARIABLES:
        entries = [entry for entry in os.environ.get(variable, "").split(os.pathsep) if entry]
        if entries:
            os.environ[variable] = os.pathsep.join(os.path.abspath(entry) for entry in entries)
