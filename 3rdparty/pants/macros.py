# Pants BUILD-file macros, loaded before every BUILD file ([GLOBAL] build_file_prelude_globs).


def vpp_test_root(benchmarks=False, extra_dependencies=()):
    """The targets of one test folder tree (packages/*/tests, tests, bench).

    Every test gets vpp-runtime from the wheel Pants builds (its compiled extension, for code
    that reaches vpp.runtime.kernels from any package), the C++ sources, the folder's data files
    and the pytest plugin that hands the import path on to child processes. Benchmarks run once
    each, as tests of their parity checks, not for timings.

    Tests also get what Pants cannot see them import: every helper module of their folder (a
    server script started by path) and, in packages/<name>/tests, all of packages/<name>/src
    (modules a child process imports by name, as in `python -c "import vpp.data.lerobot"`).
    """
    folder = build_file_dir().parts
    own_sources = []
    if len(folder) == 3 and folder[0] == "packages" and folder[2] == "tests":
        own_sources = [f"//packages/{folder[1]}/src"]
    python_tests(
        dependencies=[
            ":data",
            ":test_utils",
            *own_sources,
            "//packages/runtime:wheel",
            "//:cpp",
            "//3rdparty/pytest-plugins",
            *extra_dependencies,
        ],
        extra_env_vars=["PYTEST_ADDOPTS=--benchmark-disable"] if benchmarks else [],
    )
    python_test_utils(name="test_utils")
    files(name="data", sources=["**/*", "!**/*.py", "!**/BUILD", "!**/__pycache__/**"])
