#!/usr/bin/env bash
# Runs every test under Pants (`./pants test ::`) and ends with one line summed from the JUnit
# reports: "N passed, N failed, N skipped". Exits non-zero if any test failed or Pants did.
# Extra arguments go to `pants test` (e.g. `-- -k kernels`).
#
# If a packages/*/pyproject.toml changed its dependencies (or a package lacks its BUILD files)
# since 3rdparty/python/lock.sh last ran, the lockfile is regenerated first, from PyPI: the run
# then says so, and the regenerated files should be committed.
set -euo pipefail
cd "$(dirname "$0")/.."

PANTS_BOOTSTRAP_ONLY=1 ./pants
# The wheel's custom-op library needs ONNX Runtime's C API headers (pants.toml passes this on).
bash scripts/ort-headers.sh
export VPP_ORT_INCLUDE_DIR=${VPP_ORT_INCLUDE_DIR:-$PWD/.cache/onnxruntime-headers/include}
pants_python=.tools/pants-2.17.1/bin/python
if ! "$pants_python" 3rdparty/python/sync_from_pyprojects.py --check; then
    echo "pants-test: regenerating the lockfile; commit what 3rdparty/python/lock.sh changed" >&2
    3rdparty/python/lock.sh
fi

reports=dist/test/reports
log=dist/test/pants-test.log
rm -rf "$reports"
mkdir -p "$(dirname "$log")"
set +e
./pants --no-pantsd test --test-report --test-report-dir="$reports" :: "$@" 2>&1 | tee "$log"
pants_status=${PIPESTATUS[0]}
set -e

"$pants_python" - "$reports" "$log" "$pants_status" <<'PY'
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

reports, log, pants_status = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
passed = failed = skipped = 0
# A test file (or a batch of them, one folder's: 3rdparty/pants/macros.py) that fails before
# pytest writes its report (an error in a conftest.py, a crash) shows only in Pants' summary
# lines, "✕ <path>[ and N other files] failed in <time>": each counts as one failure.
summary = log.read_text(encoding="utf-8", errors="replace")
failed_files = re.findall(r"^✕ (\S+)(?: and \d+ other files)? failed", summary, flags=re.MULTILINE)
for path in failed_files:
    report = path.replace("/", ".")
    if not list(reports.glob(report + "*.xml")) and not list(reports.glob(f"batch-of-{report}+*.xml")):
        print(f"pants-test: {path} failed without a test report", file=sys.stderr)
        failed += 1
for report in sorted(reports.glob("**/*.xml")):
    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for suite in suites:
        tests = int(suite.get("tests", 0))
        suite_failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        suite_skipped = int(suite.get("skipped", 0))
        passed += tests - suite_failed - suite_skipped
        failed += suite_failed
        skipped += suite_skipped
if pants_status != 0 and failed == 0:
    # Pants failed before or around pytest (a resolve, a wheel build, a file pytest could not
    # collect into a report): count it, so that the closing line agrees with the exit status.
    print(f"pants-test: pants exited {pants_status} with no failed test in the reports", file=sys.stderr)
    failed = 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY
