"""predict.py --serve with a checkpoint: the API's answers and errors, on a real uvicorn server on 127.0.0.1.

The champion followed in the registry, and the page in Chromium: tests/serving/test_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.classifier import probabilities_from_checkpoint
from mnist_pipeline.serving.command import main
from mnist_pipeline.serving.framing import load_digit
from mnist_pipeline.serving.server import (
    MAX_UPLOAD_BYTES,
    UploadError,
    image_part,
    is_loopback,
    listening_socket,
    too_large_message,
)

from conftest import REPO_ROOT, logged_planted_model, logged_project_model, untrained_checkpoint
from servers import asgi_request, free_port, listening_addresses, multipart, post_image, server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of an untrained network: its answers are arbitrary, and the same in and out of the server."""
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):
    """predict.py --serve --checkpoint, started in an empty folder with an empty temporary folder: (port, both folders)."""
    folder, temporary = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("tmp")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    env = {
        "PATH": str(Path(sys.executable).parent),
        "TMPDIR": str(temporary),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }
    command = [sys.executable, str(REPO_ROOT / "predict.py"), "--serve", "--checkpoint", str(checkpoint)]
    with server(command, folder, "/model", env=env, output=log) as port:
        yield port, folder, temporary, log


def png(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def seven(size=(300, 200)) -> Image.Image:
    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).line([(100, 40), (180, 40), (126, 160)], fill=0, width=12)
    return image


def error_of(data: bytes, name: str) -> str:
    """The one line load_digit (predict.py's path) raises for these bytes."""
    with pytest.raises(PipelineError) as raised:
        load_digit(data, name=name)
    return str(raised.value)


def test_an_image_gets_the_digit_the_probabilities_and_the_pixels_the_model_saw(served, checkpoint):
    port, *_ = served
    status, answer = post_image(port, png(seven()), "seven.png")
    assert status == 200
    seen = load_digit(png(seven()), name="seven.png")
    expected = probabilities_from_checkpoint(seen[None], checkpoint)[0]
    assert np.array_equal(np.array(answer["pixels"], dtype=np.uint8), seen)
    assert np.allclose(answer["probabilities"], expected, atol=1e-5) and answer["digit"] == int(expected.argmax())
    assert answer["model"] == {
        "kind": "checkpoint",
        "checkpoint": str(checkpoint),
        "md5": hashlib.md5(checkpoint.read_bytes()).hexdigest(),
        "run_id": None,
        "run_url": None,
    }


def test_errors_are_one_json_message_with_predict_py_s_words(served):
    port, *_ = served
    blank = png(Image.new("L", (60, 60), 255))
    pair = seven((400, 200))
    ImageDraw.Draw(pair).line([(300, 40), (300, 160)], fill=0, width=12)
    cut = png(seven())[:300]
    for data, name, status in [
        (b"a shopping list\n", "notes.txt", 400),
        (b"", "empty.png", 400),
        (cut, "cut.png", 400),
        (blank, "blank.png", 422),
        (png(pair), "pair.png", 422),
    ]:
        assert post_image(port, data, name) == (status, {"error": error_of(data, name)}), name


def test_an_upload_over_the_limit_is_413_whether_its_size_is_declared_or_not(served):
    port, *_ = served
    large = np.random.default_rng(0).integers(0, 256, MAX_UPLOAD_BYTES + 1, dtype=np.uint8).tobytes()
    expected = (413, {"error": too_large_message(MAX_UPLOAD_BYTES)})
    assert post_image(port, large, "large.jpg") == expected
    assert post_image(port, large, "large.jpg", chunked=True) == expected
    assert post_image(port, large * 4, "20mb.jpg") == expected
    assert post_image(port, png(seven()), "after.png")[0] == 200  # and the server answers on


def test_a_request_without_the_image_field_says_how_to_send_it(served):
    port, *_ = served
    status, answer = post_image(port, png(seven()), field="file")
    assert (
        status == 400
        and answer["error"] == "no field named image: send the image as image (curl -F image=@digit.png ...)"
    )


def test_the_server_listens_on_loopback_and_writes_no_file(served):
    port, folder, temporary, _ = served
    assert listening_addresses(port) == {"127.0.0.1"}
    photo = np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8)  # 1.2 MB as PNG: over the
    photo[300:800, 500:560] = 0  # 1 MB above which FastAPI's form reader would spool to a temporary file
    data = png(photo)
    assert 2**20 < len(data) < MAX_UPLOAD_BYTES
    assert post_image(port, data, "photo.png")[0] in (200, 422)
    assert list(folder.iterdir()) == [] and list(temporary.iterdir()) == []


def test_the_page_loads_only_its_own_files(served):
    port, *_ = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    for text in [html] + [
        urllib.request.urlopen(f"http://127.0.0.1:{port}{asset}", timeout=10).read().decode()
        for asset in ("/static/page.js", "/static/page.css")
    ]:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text  # no address outside the server
    with pytest.raises(urllib.error.HTTPError) as missing:  # FastAPI's /docs would load Swagger from a CDN
        urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=10)
    assert missing.value.code == 404


def test_the_address_is_printed(served):
    port, *_, log = served
    assert f"at http://127.0.0.1:{port}/ (Ctrl-C to stop)" in log.read_text()


def test_another_host_than_loopback_gets_one_warning_line(checkpoint, tmp_path):
    log = tmp_path / "serve.log"
    command = [
        sys.executable,
        str(REPO_ROOT / "predict.py"),
        "--serve",
        "--checkpoint",
        str(checkpoint),
        "--host",
        "0.0.0.0",
    ]
    with server(command, tmp_path, "/model", output=log) as port:
        assert listening_addresses(port) == {"0.0.0.0"}
    warnings = [line for line in log.read_text().splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --host 0.0.0.0 lets other machines reach the page and the API, which have no login"]


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PipelineError, match=rf"^127.0.0.1:{port}: cannot listen \(Address already in use\); "):
            main(["--serve", "--checkpoint", str(tmp_path / "missing.pt"), "--port", str(port)])


@pytest.mark.parametrize(
    "host, message",
    [
        (
            "nosuch.invalid",
            r"^--host nosuch.invalid: no such address \([^)]+\); give a name or an address of this machine, "
            r"or leave --host out \(127.0.0.1: this machine only\)$",
        ),
        (
            "192.0.2.1",
            r"^--host 192.0.2.1: not an address of this machine \(Cannot assign requested address\); give one "
            r"of its addresses, or leave --host out \(127.0.0.1: this machine only\)$",
        ),
    ],
)
def test_a_host_that_is_not_this_machine_s_is_one_line_about_the_host_not_the_port(host, message):
    with pytest.raises(PipelineError, match=message):
        listening_socket(host, free_port())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--serve", "digit.png"], "--serve classifies what the page sends; leave out the files (digit.png ...)"),
        (
            ["--serve", "--model", "models:/m/1"],
            "--serve answers with the champion or with --checkpoint; --model is for files",
        ),
        ([], "give one or more image files to classify, or --serve to start the page"),
        (["digit.png", "--port", "9000"], "--port is for --serve; leave it out when classifying files"),
        (["--serve", "--port", "70000"], "--port 70000: not a port; give one from 1 to 65535"),
    ],
)
def test_a_wrong_command_line_is_one_line(argv, message):
    with pytest.raises(PipelineError) as raised:
        main(argv)
    assert str(raised.value) == message


def test_serving_a_checkpoint_imports_no_mlflow(checkpoint):
    probe = (
        "import sys; from mnist_pipeline.serving.server import checkpoint_model, create_app; "
        f"create_app(checkpoint_model({str(checkpoint)!r})); print('mlflow loaded:', 'mlflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stderr
    assert "mlflow loaded: False" in done.stdout


def test_loopback_addresses():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"))


def test_the_image_part_is_found_among_other_fields():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="../../etc/seven.png"\r\n'
        b"Content-Type: image/png\r\n\r\nPNGDATA\r\n--b--\r\n"
    )
    assert image_part(body, "multipart/form-data; boundary=b") == ("seven.png", b"PNGDATA")  # the name, no folders


def test_without_a_store_the_champion_is_one_line_and_no_store_is_created(tmp_path):
    import shutil

    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), "--serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: no MLflow store at sqlite:///{tmp_path / 'mlflow.db'}; run dvc repro first, "
        "or pass --checkpoint models/model.pt"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request to 127.0.0.1:`port`, with exactly the Host header given, if any."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = headers or {}
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for key, value in {**headers, **({"Content-Length": str(len(body))} if body is not None else {})}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_a_client_that_sends_20_mb_without_waiting_reads_the_413(served):
    """Python's urllib sends the body at once and asks to close: it saw the connection reset instead (issue 33)."""
    port, *_ = served
    body, content_type = multipart(bytes(20 * 2**20), "photo.jpg")
    upload = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read()) == {"error": too_large_message(MAX_UPLOAD_BYTES)}


def test_every_answer_carries_the_security_headers(served):
    port, *_ = served
    body, content_type = multipart(b"a shopping list", "notes.txt")
    answers = {
        path: request(port, method, path, {"Content-Type": content_type} if body_ else None, body_)
        for method, path, body_ in [
            ("GET", "/", None),
            ("GET", "/static/page.js", None),
            ("GET", "/static/page.css", None),
            ("GET", "/model", None),
            ("POST", "/predict", body),
            ("GET", "/nothing-here", None),
        ]
    }
    assert [status for status, _, _ in answers.values()] == [200, 200, 200, 200, 400, 404]
    for path, (_, headers, _) in answers.items():
        assert headers.get("x-content-type-options") == "nosniff", path
        assert headers.get("content-security-policy", "").startswith("default-src 'none'"), path


def test_a_request_under_another_host_name_is_refused(served):
    """DNS rebinding: a web page makes its own name point at 127.0.0.1, and the browser sends that name as Host."""
    port, *_ = served
    status, _, body = request(port, "GET", "/model", {"Host": f"rebind.example:{port}"})
    assert status == 400
    assert json.loads(body) == {
        "error": f"Host rebind.example:{port}: not a name this server answers to; "
        "open it as localhost, or by its IP address"
    }
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", "127.0.0.1"):
        assert request(port, "GET", "/model", {"Host": host})[0] == 200, host


def test_an_image_posted_by_another_sites_page_is_refused(served):
    """Any page the user visits may post a form to 127.0.0.1 (no preflight): only the server's own page may."""
    port, *_ = served
    body, content_type = multipart(png(seven()), "seven.png")
    status, _, answer = request(
        port, "POST", "/predict", {"Content-Type": content_type, "Origin": "http://attacker.example"}, body
    )
    assert status == 403
    assert json.loads(answer) == {
        "error": "a page at http://attacker.example may not use this server; open the page it serves instead"
    }
    assert request(port, "POST", "/predict", {"Content-Type": content_type, "Origin": "null"}, body)[0] == 403
    own = request(port, "POST", "/predict", {"Content-Type": content_type, "Origin": f"http://127.0.0.1:{port}"}, body)
    assert own[0] == 200


def test_host_and_origin_rules():
    from mnist_pipeline.serving.server import host_name, refusal, served_names

    assert [host_name(h) for h in ("127.0.0.1:8000", "[::1]:8000", "Example.COM", "localhost:80", "::1")] == [
        "127.0.0.1",
        "::1",
        "example.com",
        "localhost",
        "::1",
    ]
    assert served_names("127.0.0.1") == {"localhost"}
    assert served_names("box.lan") == {"localhost", "box.lan"}
    assert {"localhost", socket.gethostname().lower()} <= served_names("0.0.0.0")
    names = served_names("127.0.0.1")
    for host in ("127.0.0.1:8000", "[::1]:8000", "192.168.1.5:8000", "localhost:8000", None):
        assert refusal(host, None, names) is None, host
    assert refusal("evil.example:8000", None, names)[0] == 400
    assert refusal("localhost.evil.example", None, names)[0] == 400
    assert refusal("127.0.0.1:8000", "http://127.0.0.1:8000", names) is None
    assert refusal("127.0.0.1:8000", "http://localhost:8000", names)[0] == 403  # another origin, the same machine


def test_more_than_16_form_fields_are_refused_as_they_are_counted():
    from hostile_images import many_parts_body

    with pytest.raises(UploadError) as refused:
        image_part(many_parts_body(size=2**20), "multipart/form-data; boundary=b")  # 80,000 empty parts
    assert (refused.value.status, str(refused.value)) == (
        400,
        "more than 16 form fields; send the image alone, as image (curl -F image=@digit.png ...)",
    )
    fields = b"".join(f'--b\r\nContent-Disposition: form-data; name="f{n}"\r\n\r\nx\r\n'.encode() for n in range(15))
    image = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n--b--\r\n'
    assert image_part(fields + image, "multipart/form-data; boundary=b") == ("a.png", b"PNG")


@pytest.fixture(scope="module")
def answerer(checkpoint):
    from mnist_pipeline.serving.server import checkpoint_model

    return checkpoint_model(str(checkpoint)).current()


def test_parsing_and_decoding_run_off_the_event_loop(answerer, monkeypatch):
    """While one upload is parsed, the server answers others (403,000 empty parts held GET /model 1.8 s before)."""
    import mnist_pipeline.serving.server as serve
    from mnist_pipeline.serving.server import FixedModel, create_app

    entered, release, order = threading.Event(), threading.Event(), []
    parse = serve.image_part

    def slow_parse(body, content_type):
        entered.set()
        release.wait(timeout=20)  # on the event loop, this would hold every other request
        order.append("upload parsed")
        return parse(body, content_type)

    monkeypatch.setattr(serve, "image_part", slow_parse)
    app = create_app(FixedModel(answerer))
    body, content_type = multipart(png(seven()), "seven.png")

    async def scenario():
        upload = asyncio.create_task(asgi_request(app, "POST", "/predict", body, {"Content-Type": content_type}))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        assert (await asgi_request(app, "GET", "/model"))[0] == 200
        order.append("model answered")
        release.set()
        return await upload

    assert asyncio.run(scenario())[0] == 200
    assert order == ["model answered", "upload parsed"]


def blocked_framing(monkeypatch) -> tuple[dict, threading.Event]:
    """serve.answer made to wait for an event: ({"now": uploads being framed, "most": the most at once}, the event)."""
    import mnist_pipeline.serving.server as serve

    lock, release, framing = threading.Lock(), threading.Event(), {"now": 0, "most": 0}
    frame = serve.answer

    def blocked(*args):
        with lock:
            framing["now"] += 1
            framing["most"] = max(framing["most"], framing["now"])
        release.wait(timeout=20)
        with lock:
            framing["now"] -= 1
        return frame(*args)

    monkeypatch.setattr(serve, "answer", blocked)
    return framing, release


def test_at_most_two_uploads_are_framed_at_once_and_one_that_waits_half_a_second_is_503(answerer, monkeypatch):
    """Up to 40 requests decoded at once before (Starlette's thread pool): two 13000x13000 images took 5.8 GB."""
    from mnist_pipeline.serving.server import FixedModel, create_app

    framing, release = blocked_framing(monkeypatch)
    app = create_app(FixedModel(answerer))
    body, content_type = multipart(png(seven()), "seven.png")

    async def scenario():
        uploads = [
            asyncio.create_task(asgi_request(app, "POST", "/predict", body, {"Content-Type": content_type}))
            for _ in range(5)
        ]
        for _ in range(2000):  # until two are being framed and the three others, after waiting half a second, answered
            if framing["now"] == 2 and sum(upload.done() for upload in uploads) == 3:
                break
            await asyncio.sleep(0.01)
        release.set()
        return await asyncio.gather(*uploads)

    answers = asyncio.run(scenario())
    assert framing["most"] == 2  # serve.DECODERS
    assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503, 503]
    assert {body for status, _, body in answers if status == 503} == {
        b'{"error":"busy: the server is reading or framing as many images as it takes at once; try again in a moment"}'
    }


def test_an_upload_over_the_number_held_at_once_is_503_at_once(answerer, monkeypatch):
    from mnist_pipeline.serving.server import FixedModel, busy_message, create_app

    framing, release = blocked_framing(monkeypatch)
    app = create_app(FixedModel(answerer), max_uploads=1)
    body, content_type = multipart(png(seven()), "seven.png")

    async def scenario():
        held = asyncio.create_task(asgi_request(app, "POST", "/predict", body, {"Content-Type": content_type}))
        while framing["now"] == 0:
            await asyncio.sleep(0.01)
        refused = await asgi_request(app, "POST", "/predict", body, {"Content-Type": content_type})
        release.set()
        return refused, await held

    refused, held = asyncio.run(scenario())
    assert (refused[0], json.loads(refused[2])) == (503, {"error": busy_message()}) and held[0] == 200


def test_an_unexpected_error_is_one_line_of_json(answerer):
    """A 500 was Starlette's plain text, and the page then said "no answer from the server"."""
    from mnist_pipeline.serving.server import Answerer, FixedModel, create_app

    def failing(pixels):
        raise RuntimeError("the model fell over")

    app = create_app(FixedModel(Answerer(failing, answerer.about)))
    body, content_type = multipart(png(seven()), "seven.png")
    status, headers, answer = asyncio.run(asgi_request(app, "POST", "/predict", body, {"Content-Type": content_type}))
    assert status == 500 and headers["content-type"] == "application/json"
    assert json.loads(answer) == {
        "error": "the server failed on this request (RuntimeError: the model fell over); its log says more"
    }


def test_a_champion_that_is_not_the_projects_model_is_one_line_and_the_old_one_answers_on(
    local_store, tmp_path, capsys
):
    """The issue's probe: a PythonModel registered and given the alias wrote a file on the serving machine."""
    import time

    import mlflow

    from mnist_pipeline.serving.server import FollowedAlias
    from mnist_pipeline.tracking import store

    planted = tmp_path / "planted"
    client, _ = store.connect("exp-serve")
    good, _ = logged_project_model("exp-serve")
    bad = logged_planted_model("exp-serve", planted)
    for uri in (good, bad):
        mlflow.register_model(uri, "digits")
    client.set_registered_model_alias("digits", "champion", "2")
    with pytest.raises(PipelineError) as refused:  # at start: nothing else to answer with
        FollowedAlias("digits", "champion", None)
    assert str(refused.value).startswith("models:/digits/2: refused, not a model this project logs (flavors ")
    client.set_registered_model_alias("digits", "champion", "1")
    followed = FollowedAlias("digits", "champion", None, check_seconds=0.05)
    client.set_registered_model_alias("digits", "champion", "2")
    followed.start()
    said = ""
    try:
        for _ in range(1200):  # until the follower has seen the alias move, a minute at most
            said += capsys.readouterr().err
            if "version 2" in said:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # ten more looks at the registry: the refused version is not tried again
    finally:
        followed.stop()
    said += capsys.readouterr().err
    assert [line for line in said.splitlines() if line.startswith("serve:")] == [
        "serve: digits@champion moved to version 2, which is refused: not a model this project "
        "logs (flavors python_function; the project logs python_function and pytorch); "
        "version 1 answers on"
    ]
    assert followed.current().about["version"] == "1" and not planted.exists()
