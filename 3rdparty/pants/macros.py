# Pants BUILD-file macros, loaded before every BUILD file ([GLOBAL] build_file_prelude_globs).


def vpp_test_root(benchmarks=False, extra_dependencies=()):
    """The targets of one test folder tree (packages/*/tests, tests, bench).

    Every test gets the packages with compiled parts from the wheels Pants builds (vpp-runtime's
    custom-op library, which artifacts exported by any package's test load, and vpp-kernels'
    module), the folder's data files and the pytest plugins of 3rdparty/pytest-plugins (the
    import path handed on to child processes). Benchmarks run once each, as tests of their parity
    checks, not for timings.

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
            "//3rdparty/python/vpp-runtime:wheel",
            "//3rdparty/python/vpp-kernels:wheel",
            "//3rdparty/pytest-plugins",
            *extra_dependencies,
        ],
        extra_env_vars=["PYTEST_ADDOPTS=--benchmark-disable"] if benchmarks else [],
        # One pytest process per folder tree instead of one per file: each process spends seconds
        # importing torch and friends, and per file that doubled the run (fast tests: 10 minutes
        # instead of 4 on 2 cores). The folder's tests still run in a sandbox of their own, as
        # plain pytest runs them all in one process; a dependency one file lacks could be masked
        # by another file of its folder, which per-file runs (`--test-batch-size=1`) would show.
        batch_compatibility_tag="/".join(folder),
    )
    python_test_utils(name="test_utils")
    files(name="data", sources=["**/*", "!**/*.py", "!**/BUILD", "!**/__pycache__/**"])
