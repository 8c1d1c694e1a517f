"""Starts tests/franky_sim_server.py as a child process and stops it again."""

import os
import subprocess
import sys
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("franky_sim_server.py")
START_TIMEOUT_S = 30.0


def sim_host() -> str:
    """The loopback address this test process serves franky-sim on. libfranka's ports are fixed
    (1337, 1338), so test files that run at once (Pants runs one process per file, in parallel,
    each with its own PANTS_EXECUTION_SLOT) each take their own address in 127.0.0.0/8."""
    slot = os.environ.get("PANTS_EXECUTION_SLOT")
    return "127.0.0.1" if slot is None else f"127.0.{1 + int(slot) // 250}.{2 + int(slot) % 250}"


class FrankySimProcess:
    def __init__(self) -> None:
        self.host = sim_host()
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), self.host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = self._read_line(START_TIMEOUT_S)
        except Exception:
            self.stop()
            raise
        if line.strip() != "READY":
            self.stop()
            raise RuntimeError(f"franky-sim printed {line!r}; expected READY")

    def _read_line(self, timeout_s: float) -> str:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise TimeoutError(f"franky-sim did not start within {timeout_s} s")
        return self.process.stdout.readline()

    def inject_reflex(self) -> None:
        self.process.stdin.write("reflex\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        """A crash: SIGKILL, so the server closes nothing in order (unlike `stop`)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process.stdout.close()
