"""Starts `minigpt-med serve` on the tiny model for the service tests, on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CLI = os.environ.get("MINIGPT_MED_CLI")


def cli() -> str:
    """The built CLI, or a skip (a failure under CI)."""
    if not (CLI and Path(CLI).exists()):
        if os.environ.get("CI") == "true":
            raise RuntimeError("MINIGPT_MED_CLI must name the built CLI")
        pytest.skip("run through scripts/test-python.sh (needs the CLI)")
    return CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running service; `url` is its base address (no trailing slash)."""

    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [cli(), "serve", "--model-dir", str(TINY), "--port", str(self.port), *args]
        self.log = open(os.devnull, "w") if os.environ.get("MINIGPT_MED_SERVE_QUIET") else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if json.load(r).get("status") == "ok":
                        break
            except OSError:
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("serve did not become healthy in 120 s")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        """Sends `sig`, waits for the exit; returns the exit code and everything the server printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"serve did not exit within {timeout} s of signal {sig}:\n{out}")
        return self.proc.returncode, out

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def generate_json(*args: str) -> dict:
    """`minigpt-med generate --json` on the tiny model."""
    out = subprocess.run([cli(), "generate", "--model-dir", str(TINY), "--json", *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)
