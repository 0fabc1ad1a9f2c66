"""How fast `predict.py --serve` answers POST /predict: answers per second, median and 99th-percentile latency.

Starts the server as a user does (a free 127.0.0.1 port, the repository's own code), once with the
registry's champion (the logged MLflow model, the default) and once with --checkpoint models/model.pt,
and sends it, from one client on one kept-alive connection, a 28x28 PNG (an MNIST test digit) and a
2000x2000 JPEG (that digit written large, dark on light, as a phone photo). Each latency is the
client's: sending the form, framing, the model, the JSON answer. Answers per second are the one
client's, one request at a time.

With --before REV it also serves with the server's code (src/ and predict.py) at git revision REV,
in the same run, alternating REV and today's code (REV, today, today, REV) so that a change in the
machine's load falls on both: what a change to the server cost.

    .venv/bin/python benchmarks/serve.py                   # 300 small and 60 large requests per model
    .venv/bin/python benchmarks/serve.py --before main     # the same for main's code and today's, alternating
    .venv/bin/python benchmarks/serve.py --update-docs     # also put the figures into docs/serve.md

Needs a trained checkpoint and a champion (`dvc repro`) and the MNIST test files. Prints the load average
before and after: on a shared machine, rerun when the 1-minute load was above the core count minus half.
Writes benchmarks/results/serve.json. A benchmark, not a test: nothing asserts on it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import DATA, MIRROR, REPO_ROOT, RESULTS, code_version, machine, publish, start_server
from servers import multipart  # tests/support, as the tests build their bodies
from user_digits import photo_of

RESULT = RESULTS / "serve.json"
DOC = REPO_ROOT / "docs" / "serve.md"
MARK = "<!-- serve-results -->"
GOAL_MS = 20  # the small image's median, on 2 cores (issue 27)


def images(data: Path) -> dict[str, bytes]:
    """The two requests' images: an MNIST test digit as a 28x28 PNG, and as a 2000x2000 JPEG photo."""
    from mnist_pipeline.data import raw_images

    digit = raw_images(data, train=False)[0]
    small = io.BytesIO()
    Image.fromarray(digit).save(small, format="PNG")
    return {"28x28 PNG": small.getvalue(), "2000x2000 JPEG": photo_of(digit, size=(2000, 2000), at=(450, 600))}


def code_at(revision: str, folder: Path) -> Path:
    """The server's code (src/ and predict.py) at git `revision`, written into `folder`."""
    archive = subprocess.run(
        ["git", "archive", revision, "src", "predict.py"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def timed_requests(port: int, data: bytes, name: str, count: int, warmup: int) -> list[float]:
    """Seconds of each of `count` POST /predict, one after another on one connection, after `warmup` untimed ones."""
    import socket

    body, content_type = multipart(data, name)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.connect()
    # http.client writes the headers and the body apart; without TCP_NODELAY (which browsers and curl set),
    # Nagle's algorithm holds the body until the server's delayed ACK, 40 ms later, on every request.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    seconds = []
    for number in range(warmup + count):
        started = time.perf_counter()
        connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        answer = json.loads(response.read())
        elapsed = time.perf_counter() - started
        if response.status != 200:
            sys.exit(f"error: POST /predict {name} answered {response.status}: {answer}")
        if number >= warmup:
            seconds.append(elapsed)
    connection.close()
    return seconds


def summary(seconds: list[float]) -> dict:
    milliseconds = np.array(seconds) * 1000
    return {
        "requests": len(seconds),
        "answers_per_second": round(len(seconds) / sum(seconds), 1),
        "median_ms": round(float(np.median(milliseconds)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
    }


def answer_ms_by_torch_threads(checkpoint: str, data: bytes, repeats: int = 200) -> dict:
    """Median and 99th-percentile milliseconds of serve.answer (framing and the model, no HTTP) in this process on
    1 and on 2 torch threads, alone and beside one process that keeps a core busy: why the server answers on one."""
    import torch

    from mnist_pipeline.serving.server import answer, checkpoint_model

    answerer = checkpoint_model(checkpoint).current()
    medians: dict[str, dict] = {}
    for beside in ("alone", "beside a busy process"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside != "alone" else None
        try:
            for threads in (2, 1):
                torch.set_num_threads(threads)
                seconds = []
                for number in range(repeats + 10):
                    started = time.perf_counter()
                    answer(answerer, data, "digit.png")
                    if number >= 10:
                        seconds.append(time.perf_counter() - started)
                label = f"{beside}, {threads} thread{'s' if threads > 1 else ''}"
                medians[label] = {
                    "median_ms": round(float(np.median(seconds)) * 1000, 2),
                    "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 2),
                }
        finally:
            if busy:
                busy.kill()
                busy.wait()
    return medians


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="timed requests with the 28x28 PNG, per model")
    parser.add_argument("--large", type=int, default=60, help="timed requests with the 2000x2000 JPEG, per model")
    parser.add_argument("--checkpoint", default="models/model.pt")
    parser.add_argument("--data", default=str(DATA if DATA.exists() else MIRROR), help="the MNIST files")
    parser.add_argument("--before", metavar="REV", help="also serve with the code at this git revision, alternating")
    parser.add_argument("--update-docs", action="store_true", help=f"put the figures into {DOC.relative_to(REPO_ROOT)}")
    args = parser.parse_args()

    requests = images(Path(args.data))
    counts = {"28x28 PNG": args.small, "2000x2000 JPEG": args.large}
    load_before = load_average()
    print(f"load average before: {load_before:.2f}")
    seconds: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-benchmark-") as scratch:
        today = "today" if args.before else None
        # Halves of each count, in the order REV, today, today, REV: a drift in the machine's load falls on both.
        codes = (
            [
                (args.before, code_at(args.before, Path(scratch) / "before")),
                (today, REPO_ROOT),
                (today, REPO_ROOT),
                (args.before, Path(scratch) / "before"),
            ]
            if args.before
            else [(None, REPO_ROOT)]
        )
        share = len(codes) // (2 if args.before else 1)
        for model, arguments in (("champion (MLflow model)", []), ("checkpoint", ["--checkpoint", args.checkpoint])):
            for label, code in codes:
                process, port = start_server(arguments, code)
                try:
                    for name, data in requests.items():
                        count = max(1, counts[name] // share)
                        timed = timed_requests(port, data, name.replace(" ", "_"), count, warmup=max(5, count // 10))
                        seconds.setdefault(label or "", {}).setdefault(model, {}).setdefault(name, []).extend(timed)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
    results = {
        label: {model: {name: summary(timed) for name, timed in rows.items()} for model, rows in models.items()}
        for label, models in seconds.items()
    }
    by_threads = answer_ms_by_torch_threads(str(REPO_ROOT / args.checkpoint), requests["28x28 PNG"])
    load_after = load_average()
    print(f"load average after: {load_after:.2f}")
    summary_json = {
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        **code_version(),
        "load_average_1min": {"before": load_before, "after": load_after},
        "image_bytes": {name: len(data) for name, data in requests.items()},
        "goal": f"median <= {GOAL_MS} ms for the 28x28 PNG on 2 cores",
        "results": results if args.before else results[""],
        "answer_ms_by_torch_threads": by_threads,
        "command": "benchmarks/serve.py " + " ".join(sys.argv[1:]),
    }
    lines = [f"POST /predict, one client, one request at a time: {machine()}"]
    for label, models in results.items():
        for model, rows in models.items():
            for name, row in rows.items():
                revision = f"{label:8s} " if args.before else ""
                lines.append(
                    f"{revision}{model:24s} {name:15s} {row['answers_per_second']:7.1f} answers/s   median "
                    f"{row['median_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms   ({row['requests']} requests)"
                )
    lines.append("framing and the checkpoint's model for the 28x28 PNG in one process, by torch threads:")
    lines += [
        f"  {label:32s} median {row['median_ms']:5.2f} ms   p99 {row['p99_ms']:5.2f} ms"
        for label, row in by_threads.items()
    ]
    lines.append(
        f"(load average {load_before:.2f} before, {load_after:.2f} after; images "
        f"{len(requests['28x28 PNG'])} and {len(requests['2000x2000 JPEG'])} bytes)"
    )
    publish(summary_json, RESULT, lines, MARK, save=True, update_docs=args.update_docs, doc=DOC)


if __name__ == "__main__":
    main()
