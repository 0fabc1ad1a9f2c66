"""Servers the tests start as a user would: on a free 127.0.0.1 port, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port`, read from /proc/net/tcp."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        hex_ip, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1]))
    return addresses


@contextmanager
def server(command: list[str], cwd: Path, ready_path: str, env: dict[str, str] | None = None):
    """Start a server on a free 127.0.0.1 port, wait until `ready_path` answers, and always stop it."""
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, f"{command[0]} exited with {process.returncode}"
                assert time.monotonic() < deadline, f"{command} did not answer within 3 minutes"
                time.sleep(0.5)
        yield port
    finally:  # servers run worker processes: stop the whole group, whatever happened
        with contextlib.suppress(ProcessLookupError):  # a server that died has no group left to stop
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
