"""How `predict.py --serve` holds up against hostile and broken uploads: its peak memory and every answer's time.

Starts the server as a user does (a free 127.0.0.1 port, the repository's own code, a checkpoint) and sends it,
one at a time, every file of tests/support/hostile_images.py (small files declaring huge PNG, JPEG, WebP and TIFF
images, broken files, a JPEG of 5000 scans, formats the README does not name, and the largest images accepted
in their costliest modes), then 5 MB bodies of 400,000 empty form fields, a 20 MB body sent as Python's urllib
sends it (without waiting for "100 Continue"), and bursts of uploads at once. For each: the status, the
client's seconds, and the server's peak resident memory above its idle level (Linux's VmHWM, reset before
each with /proc/<pid>/clear_refs). Goals (issue 33): the peak stays under 400 MB above idle, every answer
comes within 2 s.

    .venv/bin/python benchmarks/serve_hostile.py                  # prints and writes benchmarks/results/serve_hostile.json
    .venv/bin/python benchmarks/serve_hostile.py --update-docs    # also puts the figures into docs/serve.md

Linux only (/proc). Prints the load average before and after. A benchmark, not a test: nothing asserts on it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO_ROOT, RESULTS, code_version, machine, publish, start_server
from hostile_images import HOSTILE_FILES, flat_png, many_parts_body, noisy_png
from servers import multipart  # tests/support, as the tests build their bodies

RESULT = RESULTS / "serve_hostile.json"
DOC = REPO_ROOT / "docs" / "serve.md"
MARK = "<!-- serve-hostile-results -->"
GOAL_MB, GOAL_SECONDS = 400, 2.0


def get(port: int, path: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    connection.request("GET", path)
    connection.getresponse().read()
    connection.close()
    return time.perf_counter() - started


def post(port: int, body: bytes, content_type: str) -> tuple[int, str, float]:
    """(status, the answer's error line or "", seconds) of one POST /predict on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    answer = json.loads(response.read())
    seconds = time.perf_counter() - started
    connection.close()
    return response.status, answer.get("error", ""), seconds


def post_as_urllib(port: int, body: bytes, content_type: str) -> tuple[int, str, float]:
    """POST as Python's urllib does: the whole body at once, "Connection: close", no wait for 100 Continue."""
    upload = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": content_type}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(upload, timeout=60) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        status, answer = refused.code, json.loads(refused.read())
    except OSError as exc:  # what it saw before: the connection reset
        return 0, f"{type(exc).__name__}: {exc}", time.perf_counter() - started
    return status, answer.get("error", ""), time.perf_counter() - started


class Memory:
    """The server's resident memory, from /proc/<pid>/status: now, and its peak since the last reset."""

    def __init__(self, pid: int):
        self.pid = pid

    def read(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def now(self) -> float:
        return self.read("VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak resident size to the current one

    def peak(self) -> float:
        return self.read("VmHWM")


def measured(memory: Memory, idle: float, send) -> dict:
    """Run `send` (one or more requests) and return its answers, the server's peak MB above idle, and above the
    resident level just before (what these requests took: glibc keeps some of what earlier ones freed)."""
    memory.reset_peak()
    before = memory.now()
    answers = send()
    peak = memory.peak()
    return {"answers": answers, "peak_mb_above_idle": round(peak - idle, 1), "rise_mb": round(peak - before, 1)}


def burst(port: int, uploads: list[tuple[bytes, str]]) -> list[tuple[int, str, float]]:
    """All `uploads` sent at once, each on its own connection."""
    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(lambda upload: post(port, *upload), uploads))


def model_while(port: int, uploads: list[tuple[bytes, str]]) -> tuple[list[tuple[int, str, float]], float]:
    """The uploads sent at once, and the slowest GET /model asked every 20 ms meanwhile (is the event loop free?)."""
    slowest, done = 0.0, threading.Event()

    def ask() -> None:
        nonlocal slowest
        while not done.is_set():
            slowest = max(slowest, get(port, "/model"))
            time.sleep(0.02)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        answers = burst(port, uploads)
    finally:
        done.set()
        asker.join()
    return answers, slowest


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="models/model.pt", help="the model the server answers with")
    parser.add_argument("--update-docs", action="store_true", help=f"put the figures into {DOC.relative_to(REPO_ROOT)}")
    args = parser.parse_args()
    if not (REPO_ROOT / args.checkpoint).exists():
        sys.exit(f"error: {args.checkpoint}: no such checkpoint; run dvc repro first, or pass --checkpoint")

    files = [(hostile, hostile.make()) for hostile in HOSTILE_FILES]
    load_before = load_average()
    print(f"load average before: {load_before:.2f}")
    process, port = start_server(["--checkpoint", args.checkpoint])
    memory = Memory(process.pid)
    rows: dict[str, dict] = {}
    try:
        digit = multipart(flat_png(28, 28), "warm-up.png")
        for _ in range(5):  # framing, the model and the thread pool loaded: what a server that has answered holds
            post(port, *digit)
        time.sleep(1)
        idle = memory.now()
        print(f"server idle: {idle:.0f} MB resident")
        for hostile, data in files:
            row = measured(memory, idle, lambda data=data, name=hostile.name: [post(port, *multipart(data, name))])
            rows[hostile.name] = {"why": hostile.why, "bytes": len(data), "expected": hostile.status, **row}
        parts = (many_parts_body(), "multipart/form-data; boundary=b")
        rows["400,000 empty form fields"] = {
            "why": "a 5 MB body of empty parts",
            "bytes": len(parts[0]),
            "expected": 400,
            **measured(memory, idle, lambda: [post(port, *parts)]),
        }
        twenty = multipart(bytes(20 * 2**20), "photo.jpg")
        rows["20 MB, as urllib sends it"] = {
            "why": "no wait for 100 Continue, Connection: close",
            "bytes": len(twenty[0]),
            "expected": 413,
            **measured(memory, idle, lambda: [post_as_urllib(port, *twenty)]),
        }
        costly = [multipart(data, hostile.name) for hostile, data in files if hostile.status == 422]
        rows[f"{len(costly)} largest accepted at once"] = {
            "why": "the 16 Mpx files above, together",
            "bytes": sum(len(body) for body, _ in costly),
            "expected": "422 or 503",
            **measured(memory, idle, lambda: burst(port, costly)),
        }
        twice = costly + costly
        rows[f"{len(twice)} largest accepted at once"] = {
            "why": "the 16 Mpx files above, twice, together",
            "bytes": sum(len(body) for body, _ in twice),
            "expected": "422 or 503",
            **measured(memory, idle, lambda: burst(port, twice)),
        }
        noisy = multipart(noisy_png(), "noisy-4000.png")
        rows["8 x a 5 MB 16 Mpx PNG at once"] = {
            "why": "the largest body and image accepted, as many as are held at once",
            "bytes": len(noisy[0]) * 8,
            "expected": "any, or 503",
            **measured(memory, idle, lambda: burst(port, [noisy] * 8)),
        }
        flood = [parts] * 8
        answers, slowest_model = model_while(port, flood)
        rows["8 x 400,000 empty form fields at once"] = {
            "why": "with GET /model every 20 ms meanwhile",
            "bytes": len(parts[0]) * 8,
            "expected": "400 or 503",
            "answers": answers,
            "peak_mb_above_idle": None,
            "rise_mb": None,
            "slowest_get_model_ms": round(slowest_model * 1000, 1),
        }
        time.sleep(1)
        after = memory.now()
    finally:
        process.terminate()
        process.wait(timeout=30)
    load_after = load_average()
    print(f"load average after: {load_after:.2f}")

    for row in rows.values():
        row["answers"] = [
            {"status": status, "seconds": round(seconds, 3), "error": error}
            for status, error, seconds in row["answers"]
        ]
    peak = max(row["peak_mb_above_idle"] or 0 for row in rows.values())
    slowest = max(answer["seconds"] for row in rows.values() for answer in row["answers"])
    summary = {
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        **code_version(),
        "load_average_1min": {"before": load_before, "after": load_after},
        "server_idle_mb": round(idle, 1),
        "server_after_mb": round(after, 1),
        "goal": f"peak under {GOAL_MB} MB above idle, every answer within {GOAL_SECONDS} s",
        "peak_mb_above_idle": peak,
        "slowest_answer_seconds": slowest,
        "results": rows,
        "command": "benchmarks/serve_hostile.py " + " ".join(sys.argv[1:]),
    }
    lines = [
        f"predict.py --serve --checkpoint, hostile uploads one at a time, then together: {machine()}",
        f"{'upload':38s} {'bytes':>9s}  {'status':8s} {'slowest':>7s}  {'its rise':>8s}  {'above idle':>10s}",
    ]
    for name, row in rows.items():
        statuses = sorted({answer["status"] for answer in row["answers"]})
        memory_text = (
            f"{row['rise_mb']:5.0f} MB  {row['peak_mb_above_idle']:7.0f} MB"
            if row["peak_mb_above_idle"] is not None
            else f"GET /model meanwhile: {row['slowest_get_model_ms']:.0f} ms at most"
        )
        lines.append(
            f"{name:38s} {row['bytes']:9d}  {'/'.join(map(str, statuses)):8s} "
            f"{max(a['seconds'] for a in row['answers']):6.2f}s  {memory_text}"
        )
    lines.append(
        f"peak {peak:.0f} MB above idle ({idle:.0f} MB; goal under {GOAL_MB}); slowest answer {slowest:.2f} s "
        f"(goal {GOAL_SECONDS:g} s); resident {after:.0f} MB after it all"
    )
    lines.append(f"(load average {load_before:.2f} before, {load_after:.2f} after)")
    publish(summary, RESULT, lines, MARK, save=True, update_docs=args.update_docs, doc=DOC)


if __name__ == "__main__":
    main()
