"""The `vpp` namespace spans the packages' src folders, under plain pytest and under Pants alike.

Each vpp.<name> must come from packages/<name>/src, or (Pants builds vpp-runtime into a wheel
for its compiled extension) from the installed vpp-<name> distribution's own files.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType

import pytest

# Static imports: Pants infers a test's first-party dependencies from them.
import vpp
import vpp.export
import vpp.policy
import vpp.robots
import vpp.runtime
import vpp.tvp

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES: dict[str, ModuleType] = {
    "tvp": vpp.tvp,
    "policy": vpp.policy,
    "export": vpp.export,
    "runtime": vpp.runtime,
    "robots": vpp.robots,
}


def installed_distribution_files(distribution_name: str) -> set[Path]:
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {Path(distribution.locate_file(file)).resolve() for file in distribution.files or []}


def test_vpp_is_an_implicit_namespace_package():
    init_file = getattr(vpp, "__file__", None)
    assert init_file is None, f"vpp must have no __init__.py, found {init_file}"
    assert len(list(vpp.__path__)) >= 2, f"vpp spans one folder only: {list(vpp.__path__)}"


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_subpackage_comes_from_its_own_package(name):
    module = SUBPACKAGES[name]
    module_file = Path(module.__file__).resolve()
    source_dir = REPO_ROOT / "packages" / name / "src" / "vpp" / name
    from_source = module_file.is_relative_to(source_dir)
    from_own_wheel = module_file in installed_distribution_files(f"vpp-{name}")
    assert from_source or from_own_wheel, (
        f"vpp.{name} was imported from {module_file}, expected {source_dir} "
        f"or a file of the installed vpp-{name} distribution"
    )
