"""Servers the tests start as a user would: on a free 127.0.0.1 port, always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
def server(
    command: list[str], cwd: Path, ready_path: str, env: dict[str, str] | None = None, output: Path | None = None
):
    """Start a server on a free 127.0.0.1 port, wait until `ready_path` answers, and always stop it.

    What it prints goes to `output` (stdout and stderr together) when given, else nowhere.
    """
    port = free_port()
    # Our copy of the log file closes once the child has started: the child holds its own.
    with open(output, "wb") if output else contextlib.nullcontext(subprocess.DEVNULL) as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT if output else log,
            start_new_session=True,
        )
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


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (apt-get install postgresql), if any."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()]
    return max(found, key=lambda p: int(p.parts[-2]), default=None)


@contextmanager
def postgres_cluster(bin_dir: Path, databases: tuple[str, ...] = ("mlflow",), password: str | None = None):
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port with empty `databases`; yields {name: URL}; always stopped.

    With `password`, connections over TCP must give it (the URLs do not hold it: PGPASSWORD or ~/.pgpass do);
    without, loopback connections are trusted.
    """
    # initdb and postgres refuse to run as root: as root, the cluster belongs to Debian's `postgres` user.
    owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # Not pytest's tmp_path: its parents are private to root, and the postgres user must reach the cluster.
    home = Path(tempfile.mkdtemp(prefix="pipeline-postgres-"))

    def run(*command: str, check: bool = True, env: dict[str, str] | None = None) -> None:
        done = subprocess.run(command, cwd=home, capture_output=True, text=True, env=env)
        assert done.returncode == 0 or not check, f"{command[0]}: {done.stderr.strip()}"

    try:
        if owner:
            shutil.chown(home, "postgres", "postgres")
        data, port = home / "data", free_port()
        auth = ["--auth=trust"]
        if password:
            (home / "password").write_text(password)
            if owner:
                shutil.chown(home / "password", "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={home / 'password'}"]
        # No fsync: a cluster that lives for one test module.
        run(
            *owner,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "mlflow",
            *auth,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={home} "
            "-c fsync=off -c full_page_writes=off"
        )
        run(
            *owner,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(home / "postgres.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        try:
            client_env = {**os.environ, "PGPASSWORD": password} if password else None
            for database in databases:
                run(
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "mlflow",
                    database,
                    env=client_env,
                )
            yield {database: f"postgresql://mlflow@127.0.0.1:{port}/{database}" for database in databases}
        finally:
            run(*owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def mlflow_server(backend_store: str, folder: Path, env: dict[str, str]):
    """`mlflow server` as the README starts it, on `backend_store`, serving artifacts from a folder; yields its URL."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--workers",
        "1",
    ]  # one worker is plenty for the tests' clients, and starts faster on 2 cores
    with server(command, folder, "/health", env=env) as port:
        yield f"http://127.0.0.1:{port}"


def post_image(
    port: int, data: bytes, name: str = "digit.png", field: str = "image", chunked: bool = False
) -> tuple[int, dict]:
    """POST `data` as a multipart form field to 127.0.0.1:`port`/predict; (status, JSON answer).

    http.client, as a browser, keeps the connection open: a server that answers before it has read
    the whole body (413) can drain the rest, and the client reads the answer. (urllib asks the server
    to close the connection, which then resets it while a large body is still being sent.)
    """
    import http.client
    import json
    import uuid

    body, content_type = multipart(data, name, field, boundary=uuid.uuid4().hex)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": content_type}
        if chunked:  # no Content-Length: the server has to count what arrives
            connection.request(
                "POST",
                "/predict",
                body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
                headers=headers,
                encode_chunked=True,
            )
        else:
            connection.request("POST", "/predict", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def asgi_request(
    app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to an ASGI app in this event loop, without a server: (status, headers, body).

    An error the app raises after answering (Starlette's 500 does) is dropped: the answer is what a client sees.
    """
    headers = {"host": "127.0.0.1:8000", **{k.lower(): v for k, v in (headers or {}).items()}}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(key.encode(), value.encode()) for key, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception:
        if not sent:
            raise
    start = next(message for message in sent if message["type"] == "http.response.start")
    answer_headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return (
        start["status"],
        answer_headers,
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


def multipart(
    data: bytes, name: str = "digit.png", field: str = "image", boundary: str = "b0undary"
) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type."""
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"
