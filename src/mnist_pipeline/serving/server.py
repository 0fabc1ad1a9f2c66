"""`predict.py --serve`: a local page to draw or drop a digit on and see what the model answers, and POST /predict.

The page and the API frame images with framing.load_digit, as predict.py does, and say the same one-line
errors. The answering model is a training checkpoint (no MLflow) or the registry's champion, followed:
a thread asks the registry every ALIAS_CHECK_SECONDS where the alias points, and a new version answers
once it is loaded. Safe by default: loopback only, uploads read into memory up to MAX_UPLOAD_BYTES and
no further, nothing written to disk, and the page loads nothing but its own three files.

Memory and time are bounded by what it accepts: at most MAX_UPLOADS bodies held at once, each parsed,
decoded and framed off the event loop by one of DECODERS threads, images of at most images.MAX_PIXELS
(docs/serve.md, "Hostile input"). Every answer carries the page's security headers, and a request
under another host name (DNS rebinding) or from another site's page is refused.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.framing import NotOneDigit, UnreadableImage, load_digit

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # a phone photo as a JPEG is 2-4 MB
# A refused body (too large, busy) up to this size is read and dropped before the answer: a client that sends
# its body without waiting for "100 Continue" (Python's urllib and requests) reads the answer only after.
DRAIN_BYTES = 32 * 1024 * 1024
MAX_FORM_PARTS = 16  # the page sends one; 5 MB of empty parts is 400,000 of them
# Images parsed, decoded and framed at once, off the event loop: each holds up to ~140 MB while it decodes an
# image of images.MAX_PIXELS (docs/serve.md, "Hostile input"). Two keep both cores of a small machine busy.
DECODERS = 2
MAX_UPLOADS = 8  # bodies held at once (up to 10 MB each with their image); more are answered 503 at once
# How long an upload waits for a decoder before it is answered 503: with the slowest image accepted (a noisy
# 16 Mpx PNG, about 1.1 s to decode and frame beside another), every answer comes within 2 s.
QUEUE_SECONDS = 0.5
UPLOAD_FIELD = "image"  # the multipart form field that holds the image
ALIAS_CHECK_SECONDS = 2.0  # how often the registry is asked where the alias points
WEB = Path(__file__).parent / "web"  # the page: index.html, page.js, page.css
# On every answer, the page's and the JSON's alike: the page may load and call only what this server serves
# (images drawn or framed are data: and blob: URLs), no answer is read as another type than it says, and no
# address leaks in a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = frozenset({"localhost"})  # the names a server on 127.0.0.1 answers to, besides IP addresses


class UploadError(PipelineError):
    """The request does not carry one image as the API expects: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answerer:
    """One loaded model: its probabilities (N, 10) for framed pixels (N, 28, 28) uint8, and what the page says of it."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    about: dict[
        str, Any
    ]  # JSON: kind, and name, version, alias or checkpoint, md5; run_id, run_url (None when unknown)


class FixedModel:
    """A model that never changes: a checkpoint."""

    def __init__(self, answerer: Answerer):
        self.answerer = answerer

    def current(self) -> Answerer:
        """The model answering now."""
        return self.answerer

    def start(self) -> None:
        """Nothing to follow."""

    def stop(self) -> None:
        """Nothing to stop."""


class FollowedAlias:
    """The registered model version an alias points at, reloaded when the alias moves.

    The version answering is swapped in one assignment once the new one is loaded, so every answer
    comes whole from one version, and the old version answers while the new one loads. A store that
    fails to answer (locked, restarting) leaves the current version answering; one line says so. A
    version that is not a model the project logs (classifier.ModelRefused) is never loaded: one line
    says so, the current version answers on, and that version is not tried again.
    """

    def __init__(self, model_name: str, alias: str, mlflow_ui: str | None, check_seconds: float = ALIAS_CHECK_SECONDS):
        from mnist_pipeline.tracking.store import (
            MlflowClient,
            mlflow,
            shown,
            sqlite_path,
            tracking_uri,
        )  # MLflow's environment first

        uri = tracking_uri()
        store_file = sqlite_path(uri)
        if store_file is not None and not store_file.exists():  # MLflow would create an empty one: write nothing
            raise PipelineError(
                f"no MLflow store at {shown(uri)}; run dvc repro first, or pass --checkpoint models/model.pt"
            )
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(mlflow.get_tracking_uri())
        self.model_name, self.alias, self.mlflow_ui = model_name, alias, mlflow_ui
        self.check_seconds = check_seconds
        self.answerer = self._load(self._version())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="follow-alias", daemon=True)
        self._failing = False
        self._refused: str | None = None  # the version last refused: not downloaded again every few seconds

    def current(self) -> Answerer:
        """The model answering now."""
        return self.answerer

    def start(self) -> None:
        """Start asking the registry where the alias points."""
        self._thread.start()

    def stop(self) -> None:
        """Stop asking, and wait for a load in progress."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _version(self) -> str:
        from mnist_pipeline.tracking.store import STORE_ERRORS, mlflow, reason, shown

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, self.alias).version)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise PipelineError(
                    f"models:/{self.model_name}@{self.alias}: no such model or alias in "
                    f"{shown(mlflow.get_tracking_uri())}; run dvc repro first, "
                    "or pass --checkpoint models/model.pt"
                ) from None
            raise PipelineError(f"MLflow store {shown(mlflow.get_tracking_uri())}: {reason(exc)}") from None
        except STORE_ERRORS as exc:
            raise PipelineError(f"MLflow store {shown(mlflow.get_tracking_uri())}: {reason(exc)}") from None

    def _load(self, version: str) -> Answerer:
        import mlflow

        from mnist_pipeline.serving.classifier import mlflow_classifier

        probabilities = mlflow_classifier(f"models:/{self.model_name}/{version}")
        try:
            run_id = self.client.get_model_version(self.model_name, version).run_id
            experiment_id = self.client.get_run(run_id).info.experiment_id if run_id else None
        except mlflow.exceptions.MlflowException as exc:
            raise PipelineError(
                f"models:/{self.model_name}/{version}: cannot read its run ({str(exc).splitlines()[0]})"
            ) from None
        run_url = (
            f"{self.mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            if self.mlflow_ui and experiment_id
            else None
        )
        return Answerer(
            probabilities,
            {
                "kind": "registered",
                "name": self.model_name,
                "version": version,
                "alias": self.alias,
                "run_id": run_id,
                "run_url": run_url,
            },
        )

    def _follow(self) -> None:
        from mnist_pipeline.serving.classifier import ModelRefused

        while not self._stopped.wait(self.check_seconds):
            try:
                version = self._version()
                if version not in (self.answerer.about["version"], self._refused):
                    try:
                        self.answerer = self._load(version)
                    except ModelRefused as exc:
                        self._refused = version
                        print(
                            f"serve: {self.model_name}@{self.alias} moved to version {version}, which is refused: "
                            f"not a model this project logs ({exc.reason}); version "
                            f"{self.answerer.about['version']} answers on",
                            file=sys.stderr,
                            flush=True,
                        )
                    else:
                        print(
                            f"serve: {self.model_name}@{self.alias} moved to version {version}; answering with it",
                            file=sys.stderr,
                            flush=True,
                        )
                self._failing = False
            except Exception as exc:  # a store or a load that fails, whatever raised: the current version answers on
                if not self._failing:  # one line per outage, not one every few seconds
                    print(
                        f"serve: cannot follow {self.model_name}@{self.alias} ({str(exc).splitlines()[0]}); "
                        f"version {self.answerer.about['version']} answers meanwhile",
                        file=sys.stderr,
                        flush=True,
                    )
                self._failing = True


def checkpoint_model(checkpoint_path: str) -> FixedModel:
    """A training checkpoint as the answering model; imports no MLflow."""
    from mnist_pipeline.serving.classifier import checkpoint_classifier

    # No run id: a checkpoint is a result, the same bytes whichever run made it; its MD5 is dvc.lock's.
    probabilities, md5 = checkpoint_classifier(checkpoint_path)
    return FixedModel(
        Answerer(
            probabilities,
            {"kind": "checkpoint", "checkpoint": str(checkpoint_path), "md5": md5, "run_id": None, "run_url": None},
        )
    )


def answer(answerer: Answerer, data: bytes | bytearray, name: str) -> dict[str, Any]:
    """What the model says of the image in `data`: the digit, the ten probabilities, the 28x28 pixels it saw, the model."""
    pixels = load_digit(data, name=name)
    probabilities = answerer.probabilities(pixels[None])[0]
    return {
        "digit": int(probabilities.argmax()),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "pixels": pixels.tolist(),
        "model": answerer.about,
    }


def answer_upload(answerer: Answerer, body: bytes | bytearray, content_type: str) -> dict[str, Any]:
    """The answer for a POST /predict body: its image part found, decoded, framed and classified."""
    name, data = image_part(body, content_type)
    return answer(answerer, data, name)


def image_part(body: bytes | bytearray, content_type: str) -> tuple[str, bytearray]:
    """(file name, bytes) of the `image` field of a multipart/form-data body, held in memory only.

    python-multipart's parser is fed the body directly: FastAPI's own form reading would spool a
    part over 1 MB to a temporary file, and the server writes no files. More than MAX_FORM_PARTS
    parts are refused as they are counted.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(
            f"send the image as multipart/form-data with a field named {UPLOAD_FIELD} "
            f"(curl -F {UPLOAD_FIELD}=@digit.png ...)",
            400,
        )
    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {}

    def on_part_begin() -> None:
        if len(parts) == MAX_FORM_PARTS:
            raise UploadError(
                f"more than {MAX_FORM_PARTS} form fields; send the image alone, as {UPLOAD_FIELD} "
                f"(curl -F {UPLOAD_FIELD}=@digit.png ...)",
                400,
            )
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header.get("field", b"").lower()] = header.get("value", b"")
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += memoryview(data)[start:end]  # no copy of the slice: the image is held twice at most

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)  # type: ignore[arg-type]  # it slices any bytes-like; bytes(body) would copy the upload
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart raises its own errors and ValueError on a malformed body
        raise UploadError(
            f"a malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", 400
        ) from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name") == UPLOAD_FIELD.encode():
            name = disposition.get(b"filename", b"").decode("utf-8", "replace").replace("\n", " ") or UPLOAD_FIELD
            return Path(name).name or UPLOAD_FIELD, part["data"]
    raise UploadError(
        f"no field named {UPLOAD_FIELD}: send the image as {UPLOAD_FIELD} (curl -F {UPLOAD_FIELD}=@digit.png ...)", 400
    )


def too_large_message(limit: int) -> str:
    """The one line a request over the upload limit gets."""
    return f"upload too large: more than {limit / 2**20:g} MB; send a smaller image"


def busy_message() -> str:
    """The one line an upload gets when the server has as many as it takes at once."""
    return "busy: the server is reading or framing as many images as it takes at once; try again in a moment"


def host_name(host: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `::1`, `Example:80` -> `example`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def served_names(host: str) -> frozenset[str]:
    """The host names a server listening on `host` answers to, besides IP addresses.

    localhost, and the name given to --host; on every address (0.0.0.0, ::), also this machine's names.
    Any IP address is accepted: a DNS rebinding attack reaches the server under the attacker's own name.
    """
    names = set(LOOPBACK_NAMES) | {host_name(host)}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(name for name in names if name and not _is_address(name))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def refusal(host: str | None, origin: str | None, names: frozenset[str]) -> tuple[int, str] | None:
    """(status, one line) for a request this server does not answer, from its Host and Origin headers; else None.

    A Host other than an IP address or one of `names` is a web page that made its own name point at this
    machine (DNS rebinding). An Origin other than this server's own is another site's page posting here,
    which a browser allows without asking (a multipart POST needs no CORS preflight).
    """
    if host is not None and not _is_address(host_name(host)) and host_name(host) not in names:
        return 400, (
            f"Host {host}: not a name this server answers to; open it as "
            f"{' or '.join(sorted(names))}, or by its IP address"
        )
    if origin is not None and origin.lower() != f"http://{host or ''}".lower():
        return 403, f"a page at {origin} may not use this server; open the page it serves instead"
    return None


class Guarded:
    """An ASGI app behind the Host and Origin checks (`refusal`), with SECURITY_HEADERS on every answer it gives.

    Outside the FastAPI app, so that its own answers (404s, 405s, the 500 of an unexpected error)
    carry the headers too.
    """

    def __init__(self, app, names: frozenset[str]):
        self.app, self.names = app, names
        self.headers = [(key.lower().encode(), value.encode()) for key, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        headers = Headers(scope=scope)
        refused = refusal(headers.get("host"), headers.get("origin"), self.names)
        if refused:
            await JSONResponse({"error": refused[1]}, status_code=refused[0])(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def drain(chunks, limit: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of a request's body, up to `limit` bytes, so that its client reads the answer.

    A client that sends its whole body before it reads (Python's urllib, requests) and is answered
    before it has sent it sees the connection reset instead; uvicorn closes a connection whose client
    asked to close it as soon as the answer is sent. Nothing is kept. Past `limit`, the answer goes
    out anyway.
    """
    read = 0
    async for chunk in chunks:
        read += len(chunk)
        if read > limit:
            return


@dataclass
class _Uploads:
    """An app's uploads: the bodies held now, and the decoders' limiter (made in the event loop, by the first upload)."""

    held: int = 0
    decoding: anyio.CapacityLimiter | None = None


def create_app(
    model,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    names: frozenset[str] = LOOPBACK_NAMES,
    decoders: int = DECODERS,
    max_uploads: int = MAX_UPLOADS,
    queue_seconds: float = QUEUE_SECONDS,
):
    """The page at /, its files at /static, the model at /model, and POST /predict, behind `Guarded`.

    `model` is a FixedModel or a FollowedAlias: what answers is asked per request, and its
    following starts and stops with the app. `names` are the host names it answers to
    (`served_names`); the rest bound its memory and time (the module's constants).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        model.start()
        try:
            yield
        finally:
            model.stop()

    # No /docs or /redoc: FastAPI's pages for them load scripts from a CDN, and this page loads nothing from outside.
    app = FastAPI(title="MNIST digit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    uploads = _Uploads()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises the error on after this answer, and uvicorn prints its traceback on the server's stderr.
        line = traceback.format_exception_only(exc)[-1].strip()
        return error(500, f"the server failed on this request ({line}); its log says more")

    app.add_exception_handler(Exception, unexpected)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html")

    @app.get("/model")
    def which_model() -> dict[str, Any]:
        return {"model": model.current().about, "max_upload_bytes": max_upload_bytes}

    @app.post("/predict")
    async def predict(request: Request):
        chunks = request.stream()
        # A client that waits for "100 Continue" reads an answer at once: reading its body would ask it to send it.
        waits = "100-continue" in request.headers.get("expect", "").lower()

        async def refuse(status: int, message: str) -> JSONResponse:
            if not waits:
                await drain(chunks)
            return error(status, message)

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:  # checked before any of the body is read
            if int(declared) > DRAIN_BYTES:  # not worth reading: a client that does not wait may see a reset
                return error(413, too_large_message(max_upload_bytes))
            return await refuse(413, too_large_message(max_upload_bytes))
        if uploads.held >= max_uploads:
            return await refuse(503, busy_message())
        uploads.held += 1
        try:
            body = bytearray()
            async for chunk in chunks:  # a body without a declared size (chunked) is counted as it arrives
                body += chunk
                if len(body) > max_upload_bytes:
                    body.clear()  # freed while the rest is drained
                    return await refuse(413, too_large_message(max_upload_bytes))
            if uploads.decoding is None:
                uploads.decoding = anyio.CapacityLimiter(decoders)
            decoding, acquired = uploads.decoding, False
            with anyio.move_on_after(queue_seconds):
                await decoding.acquire()
                acquired = True
            if not acquired:
                return error(503, busy_message())
            try:
                # Parsing, decoding, framing and the model, off the event loop: the server answers others meanwhile.
                return await anyio.to_thread.run_sync(
                    answer_upload, model.current(), body, request.headers.get("content-type", "")
                )
            finally:
                decoding.release()
        except UploadError as exc:
            return error(exc.status, str(exc))
        except UnreadableImage as exc:
            return error(400, str(exc))
        except NotOneDigit as exc:
            return error(422, str(exc))
        finally:
            uploads.held -= 1

    return Guarded(app, names)


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening; one line on what is wrong otherwise (before any model loads)."""
    if not 0 <= port <= 65535:
        raise PipelineError(f"--port {port}: not a port; give one from 1 to 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP said, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
        # so, and with it on, every answer waited for the client's delayed ACK, 40 ms (benchmarks/serve.py).
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
    except OSError as exc:
        # The port is to blame only when the address is this machine's: a name that does not resolve, or an
        # address of another machine, is the host's fault.
        loopback_hint = "or leave --host out (127.0.0.1: this machine only)"
        if isinstance(exc, socket.gaierror):
            raise PipelineError(
                f"--host {host}: no such address ({exc.strerror or exc}); give a name or an address "
                f"of this machine, {loopback_hint}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PipelineError(
                f"--host {host}: not an address of this machine ({exc.strerror}); give one of its "
                f"addresses, {loopback_hint}"
            ) from None
        raise PipelineError(
            f"{host}:{port}: cannot listen ({exc.strerror or exc}); choose another --port, or stop what uses it"
        ) from None
    return listener


def return_freed_memory() -> bool:
    """Have glibc give blocks of 16 MiB or more back to the system when they are freed; False where it cannot.

    glibc serves an allocation below its mmap threshold from heaps it keeps after the free, and raises that
    threshold to 32 MiB as large blocks are freed, so the blocks a large image is decoded into stay with
    the process: after the hostile uploads of benchmarks/serve_hostile.py the server held 415 MB more
    than idle, and a burst's peak stood on the last one's (411 MB above idle). A fixed threshold maps
    every larger block and unmaps it when freed; fixing it also fixes glibc's heap trimming at 128 kB,
    so the trim threshold is set too. Measured (benchmarks/serve.py's 2000x2000 JPEG after 150 small
    images, and the hostile set's peak and what it kept): 1 MiB, +33 ms an answer, 286 and 91 MB;
    8 MiB / 32 MiB, +10 ms, 302 and 204 MB; 16 MiB / 64 MiB, +0 ms, 305 and 273 MB (docs/serve.md).
    mallopt is glibc's documented interface.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 16 << 20)) and bool(mallopt(m_trim_threshold, 64 << 20))


def serve(host: str, port: int, checkpoint: str | None = None, mlflow_ui: str | None = None) -> None:
    """Serve the page and the API until Ctrl-C: the checkpoint's model, or the registry's champion, followed."""
    import os

    import uvicorn

    from mnist_pipeline.compute.device import use_threads
    from mnist_pipeline.config import CHAMPION_ALIAS, load_config

    if not is_loopback(host):
        print(
            f"warning: --host {host} lets other machines reach the page and the API, which have no login",
            file=sys.stderr,
            flush=True,
        )
    listener = listening_socket(host, port)
    return_freed_memory()
    # Each answer on one thread: one image is too little work to share, and beside a busy process torch's second
    # thread, waiting for a core, makes the slowest answers several times slower (benchmarks/serve.py,
    # "answer_ms_by_torch_threads"). Answers to requests that arrive together still run side by side.
    use_threads(1)
    model: FixedModel | FollowedAlias
    if checkpoint:
        model = checkpoint_model(checkpoint)
    else:
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        ui = mlflow_ui or (tracking if tracking.startswith(("http://", "https://")) else None)
        model = FollowedAlias(load_config().tracking.registered_model, CHAMPION_ALIAS, ui)
    about = model.current().about
    answering = (
        f"checkpoint {about['checkpoint']}"
        if about["kind"] == "checkpoint"
        else f"{about['name']} version {about['version']} (alias {about['alias']}, followed)"
    )
    shown_host = f"[{host}]" if ":" in host else host
    print(f"serving {answering} at http://{shown_host}:{listener.getsockname()[1]}/ (Ctrl-C to stop)", flush=True)
    app = create_app(model, names=served_names(host))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])
