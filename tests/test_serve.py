"""predict.py --serve with a checkpoint: the API's answers and errors, on a real uvicorn server on 127.0.0.1.

The champion followed in the registry, and the page in Chromium: tests/test_serve_e2e.py.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO_ROOT, untrained_checkpoint
from mnist_pipeline.classifier import probabilities_from_checkpoint
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.images import load_digit
from mnist_pipeline.predict import main
from mnist_pipeline.serve import MAX_UPLOAD_BYTES, image_part, is_loopback, listening_socket, too_large_message
from servers import free_port, listening_addresses, post_image, server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of an untrained network: its answers are arbitrary, and the same in and out of the server."""
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):
    """predict.py --serve --checkpoint, started in an empty folder with an empty temporary folder: (port, both folders)."""
    folder, temporary = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("tmp")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    env = {"PATH": str(Path(sys.executable).parent), "TMPDIR": str(temporary), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(REPO_ROOT / "src")}
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
    assert answer["model"] == {"kind": "checkpoint", "checkpoint": str(checkpoint),
                               "md5": hashlib.md5(checkpoint.read_bytes()).hexdigest(), "run_id": None, "run_url": None}


def test_errors_are_one_json_message_with_predict_py_s_words(served):
    port, *_ = served
    blank = png(Image.new("L", (60, 60), 255))
    pair = seven((400, 200))
    ImageDraw.Draw(pair).line([(300, 40), (300, 160)], fill=0, width=12)
    cut = png(seven())[:300]
    for data, name, status in [(b"a shopping list\n", "notes.txt", 400), (b"", "empty.png", 400), (cut, "cut.png", 400),
                               (blank, "blank.png", 422), (png(pair), "pair.png", 422)]:
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
    assert status == 400 and answer["error"] == "no field named image: send the image as image (curl -F image=@digit.png ...)"


def test_the_server_listens_on_loopback_and_writes_no_file(served):
    port, folder, temporary, _ = served
    assert listening_addresses(port) == {"127.0.0.1"}
    photo = np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8)  # 1.2 MB as PNG: over the
    photo[300:800, 500:560] = 0  # 1 MB above which FastAPI's form reader would spool to a temporary file
    data = png(photo)
    assert 2 ** 20 < len(data) < MAX_UPLOAD_BYTES
    assert post_image(port, data, "photo.png")[0] in (200, 422)
    assert list(folder.iterdir()) == [] and list(temporary.iterdir()) == []


def test_the_page_loads_only_its_own_files(served):
    port, *_ = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    for text in [html] + [urllib.request.urlopen(f"http://127.0.0.1:{port}{asset}", timeout=10).read().decode()
                          for asset in ("/static/page.js", "/static/page.css")]:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text  # no address outside the server
    with pytest.raises(urllib.error.HTTPError) as missing:  # FastAPI's /docs would load Swagger from a CDN
        urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=10)
    assert missing.value.code == 404


def test_the_address_is_printed(served):
    port, *_, log = served
    assert f"at http://127.0.0.1:{port}/ (Ctrl-C to stop)" in log.read_text()


def test_another_host_than_loopback_gets_one_warning_line(checkpoint, tmp_path):
    log = tmp_path / "serve.log"
    command = [sys.executable, str(REPO_ROOT / "predict.py"), "--serve", "--checkpoint", str(checkpoint),
               "--host", "0.0.0.0"]
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


@pytest.mark.parametrize("host, message", [
    ("nosuch.invalid", r"^--host nosuch.invalid: no such address \([^)]+\); give a name or an address of this machine, "
                       r"or leave --host out \(127.0.0.1: this machine only\)$"),
    ("192.0.2.1", r"^--host 192.0.2.1: not an address of this machine \(Cannot assign requested address\); give one "
                  r"of its addresses, or leave --host out \(127.0.0.1: this machine only\)$"),
])
def test_a_host_that_is_not_this_machine_s_is_one_line_about_the_host_not_the_port(host, message):
    with pytest.raises(PipelineError, match=message):
        listening_socket(host, free_port())


@pytest.mark.parametrize("argv, message", [
    (["--serve", "digit.png"], "--serve classifies what the page sends; leave out the files (digit.png ...)"),
    (["--serve", "--model", "models:/m/1"], "--serve answers with the champion or with --checkpoint; --model is for files"),
    ([], "give one or more image files to classify, or --serve to start the page"),
    (["digit.png", "--port", "9000"], "--port is for --serve; leave it out when classifying files"),
    (["--serve", "--port", "70000"], "--port 70000: not a port; give one from 1 to 65535"),
])
def test_a_wrong_command_line_is_one_line(argv, message):
    with pytest.raises(PipelineError) as raised:
        main(argv)
    assert str(raised.value) == message


def test_serving_a_checkpoint_imports_no_mlflow(checkpoint):
    probe = ("import sys; from mnist_pipeline.serve import checkpoint_model, create_app; "
             f"create_app(checkpoint_model({str(checkpoint)!r})); print('mlflow loaded:', 'mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 0, done.stderr
    assert "mlflow loaded: False" in done.stdout


def test_loopback_addresses():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"))


def test_the_image_part_is_found_among_other_fields():
    body = (b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="../../etc/seven.png"\r\n'
            b"Content-Type: image/png\r\n\r\nPNGDATA\r\n--b--\r\n")
    assert image_part(body, "multipart/form-data; boundary=b") == ("seven.png", b"PNGDATA")  # the name, no folders


def test_without_a_store_the_champion_is_one_line_and_no_store_is_created(tmp_path):
    import shutil

    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), "--serve", "--port", str(free_port())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: no MLflow store at sqlite:///{tmp_path / 'mlflow.db'}; run dvc repro first, "
                                   "or pass --checkpoint models/model.pt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]
