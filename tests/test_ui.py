"""The MLflow UI as the README starts it: it serves the project's store and listens on 127.0.0.1 only."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


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


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc to see listening sockets")
def test_ui_started_as_the_readme_says_listens_on_loopback_only(tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    # The README's command, with a free port instead of 5000.
    server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.read().strip() == b"OK"
                    break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui did not answer within 2 minutes"
                time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}
        assert (tmp_path / "mlflow.db").exists()  # the store the README names, in the folder it runs in
    finally:  # the UI runs worker processes: stop the whole group, whatever happened
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
