"""Lets a test's child Python processes import first-party code under `pants test`.

Pants puts the source roots (packages/*/src, ...) on sys.path through PEX_EXTRA_SYS_PATH, which
only the PEX entry point of the test process reads. Children started as `sys.executable -c ...`,
`torchrun -m vpp...` or by script path get the environment's third-party packages but not those
roots. Exporting them, made absolute, as PYTHONPATH gives children the test's own import path,
whatever folder they start in. Loaded by `[pytest] args` in pants.toml; plain pytest never
loads it.
"""

from __future__ import annotations

import os


def pytest_configure(config: object) -> None:
    roots = [os.path.abspath(root) for root in os.environ.get("PEX_EXTRA_SYS_PATH", "").split(os.pathsep) if root]
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + inherited))
