"""`predict.py --serve`: a local page to draw or drop a digit on and see what the model answers, and POST /predict.

The page and the API frame images with images.load_digit, as predict.py does, and say the same one-line
errors. The answering model is a training checkpoint (no MLflow) or the registry's champion, followed:
a thread asks the registry every ALIAS_CHECK_SECONDS where the alias points, and a new version answers
once it is loaded. Safe by default: loopback only, uploads read into memory up to MAX_UPLOAD_BYTES and
no further, nothing written to disk, and the page loads nothing but its own three files.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.images import NotOneDigit, UnreadableImage, load_digit

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # a phone photo as a JPEG is 2-4 MB
UPLOAD_FIELD = "image"  # the multipart form field that holds the image
ALIAS_CHECK_SECONDS = 2.0  # how often the registry is asked where the alias points
WEB = Path(__file__).parent / "web"  # the page: index.html, page.js, page.css
# The page may load and call only what this server serves; images drawn or framed are data: and blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class UploadError(PipelineError):
    """The request does not carry one image as the API expects: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answerer:
    """One loaded model: its probabilities (N, 10) for framed pixels (N, 28, 28) uint8, and what the page says of it."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    about: dict[str, Any]  # JSON: kind, and name, version, alias or checkpoint, md5; run_id, run_url (None when unknown)


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
    fails to answer (locked, restarting) leaves the current version answering; one line says so.
    """

    def __init__(self, model_name: str, alias: str, mlflow_ui: Optional[str], check_seconds: float = ALIAS_CHECK_SECONDS):
        from mnist_pipeline.store import MlflowClient, sqlite_path, mlflow, shown, tracking_uri  # MLflow's environment first

        uri = tracking_uri()
        store_file = sqlite_path(uri)
        if store_file is not None and not store_file.exists():  # MLflow would create an empty one: write nothing
            raise PipelineError(f"no MLflow store at {shown(uri)}; run dvc repro first, or pass --checkpoint models/model.pt")
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(mlflow.get_tracking_uri())
        self.model_name, self.alias, self.mlflow_ui = model_name, alias, mlflow_ui
        self.check_seconds = check_seconds
        self.answerer = self._load(self._version())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="follow-alias", daemon=True)
        self._failing = False

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
        from mnist_pipeline.store import STORE_ERRORS, mlflow, reason, shown

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, self.alias).version)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise PipelineError(f"models:/{self.model_name}@{self.alias}: no such model or alias in "
                                    f"{shown(mlflow.get_tracking_uri())}; run dvc repro first, "
                                    "or pass --checkpoint models/model.pt") from None
            raise PipelineError(f"MLflow store {shown(mlflow.get_tracking_uri())}: {reason(exc)}") from None
        except STORE_ERRORS as exc:
            raise PipelineError(f"MLflow store {shown(mlflow.get_tracking_uri())}: {reason(exc)}") from None

    def _load(self, version: str) -> Answerer:
        import mlflow

        from mnist_pipeline.classifier import mlflow_classifier

        probabilities = mlflow_classifier(f"models:/{self.model_name}/{version}")
        try:
            run_id = self.client.get_model_version(self.model_name, version).run_id
            experiment_id = self.client.get_run(run_id).info.experiment_id if run_id else None
        except mlflow.exceptions.MlflowException as exc:
            raise PipelineError(f"models:/{self.model_name}/{version}: cannot read its run "
                                f"({str(exc).splitlines()[0]})") from None
        run_url = (f"{self.mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
                   if self.mlflow_ui and experiment_id else None)
        return Answerer(probabilities, {"kind": "registered", "name": self.model_name, "version": version,
                                        "alias": self.alias, "run_id": run_id, "run_url": run_url})

    def _follow(self) -> None:
        while not self._stopped.wait(self.check_seconds):
            try:
                version = self._version()
                if version != self.answerer.about["version"]:
                    self.answerer = self._load(version)
                    print(f"serve: {self.model_name}@{self.alias} moved to version {version}; answering with it",
                          file=sys.stderr, flush=True)
                self._failing = False
            except Exception as exc:  # a store or a load that fails, whatever raised: the current version answers on
                if not self._failing:  # one line per outage, not one every few seconds
                    print(f"serve: cannot follow {self.model_name}@{self.alias} ({str(exc).splitlines()[0]}); "
                          f"version {self.answerer.about['version']} answers meanwhile", file=sys.stderr, flush=True)
                self._failing = True


def checkpoint_model(checkpoint_path: str) -> FixedModel:
    """A training checkpoint as the answering model; imports no MLflow."""
    from mnist_pipeline.classifier import checkpoint_classifier

    # No run id: a checkpoint is a result, the same bytes whichever run made it; its MD5 is dvc.lock's.
    probabilities, md5 = checkpoint_classifier(checkpoint_path)
    return FixedModel(Answerer(probabilities, {"kind": "checkpoint", "checkpoint": str(checkpoint_path), "md5": md5,
                                               "run_id": None, "run_url": None}))


def answer(answerer: Answerer, data: bytes, name: str) -> dict[str, Any]:
    """What the model says of the image in `data`: the digit, the ten probabilities, the 28x28 pixels it saw, the model."""
    pixels = load_digit(data, name=name)
    probabilities = answerer.probabilities(pixels[None])[0]
    return {"digit": int(probabilities.argmax()), "probabilities": [round(float(p), 6) for p in probabilities],
            "pixels": pixels.tolist(), "model": answerer.about}


def image_part(body: bytes, content_type: str) -> tuple[str, bytes]:
    """(file name, bytes) of the `image` field of a multipart/form-data body, held in memory only.

    python-multipart's parser is fed the body directly: FastAPI's own form reading would spool a
    part over 1 MB to a temporary file, and the server writes no files.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(f"send the image as multipart/form-data with a field named {UPLOAD_FIELD} "
                          f"(curl -F {UPLOAD_FIELD}=@digit.png ...)", 400)
    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header.get("field", b"").lower()] = header.get("value", b"")
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own errors and ValueError on a malformed body
        raise UploadError(f"a malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                          400) from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name") == UPLOAD_FIELD.encode():
            name = disposition.get(b"filename", b"").decode("utf-8", "replace").replace("\n", " ") or UPLOAD_FIELD
            return Path(name).name or UPLOAD_FIELD, bytes(part["data"])
    raise UploadError(f"no field named {UPLOAD_FIELD}: send the image as {UPLOAD_FIELD} "
                      f"(curl -F {UPLOAD_FIELD}=@digit.png ...)", 400)


def too_large_message(limit: int) -> str:
    """The one line a request over the upload limit gets."""
    return f"upload too large: more than {limit / 2 ** 20:g} MB; send a smaller image"


def create_app(model, max_upload_bytes: int = MAX_UPLOAD_BYTES):
    """The FastAPI app: the page at /, its files at /static, the model at /model, and POST /predict.

    `model` is a FixedModel or a FollowedAlias: what answers is asked per request, and its
    following starts and stops with the app.
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

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers=PAGE_HEADERS)

    @app.get("/model")
    def which_model() -> dict[str, Any]:
        return {"model": model.current().about, "max_upload_bytes": max_upload_bytes}

    @app.post("/predict")
    async def predict(request: Request):
        # The declared size is checked before any of the body is read; a body without one (chunked) is
        # counted as it arrives. uvicorn discards the rest of a refused body, so the client reads the 413.
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, too_large_message(max_upload_bytes))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                return error(413, too_large_message(max_upload_bytes))
        try:
            name, data = image_part(bytes(body), request.headers.get("content-type", ""))
            # Framing and the model take milliseconds of CPU: off the event loop, so the server stays responsive.
            return await run_in_threadpool(answer, model.current(), data, name)
        except UploadError as exc:
            return error(exc.status, str(exc))
        except UnreadableImage as exc:
            return error(400, str(exc))
        except NotOneDigit as exc:
            return error(422, str(exc))

    return app


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
            raise PipelineError(f"--host {host}: no such address ({exc.strerror or exc}); give a name or an address "
                                f"of this machine, {loopback_hint}") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PipelineError(f"--host {host}: not an address of this machine ({exc.strerror}); give one of its "
                                f"addresses, {loopback_hint}") from None
        raise PipelineError(f"{host}:{port}: cannot listen ({exc.strerror or exc}); "
                            "choose another --port, or stop what uses it") from None
    return listener


def serve(host: str, port: int, checkpoint: Optional[str] = None, mlflow_ui: Optional[str] = None) -> None:
    """Serve the page and the API until Ctrl-C: the checkpoint's model, or the registry's champion, followed."""
    import os

    import uvicorn

    from mnist_pipeline.config import CHAMPION_ALIAS, load_config
    from mnist_pipeline.device import use_threads

    if not is_loopback(host):
        print(f"warning: --host {host} lets other machines reach the page and the API, which have no login",
              file=sys.stderr, flush=True)
    listener = listening_socket(host, port)
    # Each answer on one thread: one image is too little work to share, and beside a busy process torch's second
    # thread, waiting for a core, makes the slowest answers several times slower (benchmarks/serve.py,
    # "answer_ms_by_torch_threads"). Answers to requests that arrive together still run side by side.
    use_threads(1)
    if checkpoint:
        model = checkpoint_model(checkpoint)
    else:
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        ui = mlflow_ui or (tracking if tracking.startswith(("http://", "https://")) else None)
        model = FollowedAlias(load_config().tracking.registered_model, CHAMPION_ALIAS, ui)
    about = model.current().about
    answering = (f"checkpoint {about['checkpoint']}" if about["kind"] == "checkpoint"
                 else f"{about['name']} version {about['version']} (alias {about['alias']}, followed)")
    shown_host = f"[{host}]" if ":" in host else host
    print(f"serving {answering} at http://{shown_host}:{listener.getsockname()[1]}/ (Ctrl-C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(model), log_level="warning", access_log=False))
    server.run(sockets=[listener])
