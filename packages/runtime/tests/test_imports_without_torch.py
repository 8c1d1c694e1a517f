"""Nothing in vpp.runtime imports torch (or diffusers, transformers, triton): a robot PC
installs vpp-runtime without them."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import importlib, importlib.util, json, pkgutil, sys
import vpp.runtime

# Python modules only: the custom-op library (libvpp_ort_ops.so) lies in the package folder too
found = (m.name for m in pkgutil.walk_packages(vpp.runtime.__path__, "vpp.runtime."))
names = sorted(n for n in found if importlib.util.find_spec(n).origin.endswith(".py"))
for name in names:
    importlib.import_module(name)
heavy = sorted(n for n in ("torch", "diffusers", "transformers", "triton") if n in sys.modules)
print(json.dumps({"modules": names, "heavy": heavy}))
"""


def test_every_runtime_module_imports_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    # the walk found the package's modules (a broken walk would pass vacuously)
    expected = {"vpp.runtime.policy", "vpp.runtime.client", "vpp.runtime.custom_ops", "vpp.runtime.tokenizer"}
    assert expected <= set(report["modules"])
    assert report["heavy"] == [], f"importing vpp.runtime's modules loaded {report['heavy']}"
