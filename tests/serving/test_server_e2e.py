"""predict.py --serve in Chromium: digits drawn with the mouse, files dropped and chosen, the errors, the champion
followed while its alias moves, and a checkpoint served with no MLflow store.

One copy of the prepared project, after a second training (the README's fast recipe, on all the training
images): the registry holds version 1 (the test slice's model) and version 2, the champion.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_framing import CANVAS_SIDE, CANVAS_STROKES

from mnist_pipeline.serving.framing import load_digit
from mnist_pipeline.serving.server import MAX_UPLOAD_BYTES

from conftest import MNIST_MIRROR, REPO_ROOT, prerequisite, requires_mnist_mirror
from dvc_project import copy_project, environment, mlflow_client, run
from servers import listening_addresses, post_image, server
from user_digits import photo_of

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
SCREENSHOT = REPO_ROOT / "docs" / "serve.png"  # the README's picture, written when UPDATE_SCREENSHOTS=1
FAST_RECIPE = [
    "nproc=1",
    "model=compact",
    "optimizer=adamw",
    "lr=0.02",
    "momentum=0.9",
    "batch_size=256",
    "schedule=onecycle",
    "epochs=2",
    "label_smoothing=0.1",
    "data.max_train_images=null",
]
MLFLOW_UI = "http://127.0.0.1:5000"
pytestmark = [
    pytest.mark.e2e,
    requires_mnist_mirror(),
    prerequisite(
        Path(CHROMIUM).exists() and shutil.which("chromium"),
        f"Debian's Chromium ({CHROMIUM})",
        "apt-get install chromium chromium-driver (as .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def project(prepared_project, tmp_path_factory):
    project = copy_project(prepared_project, tmp_path_factory.mktemp("serve"))
    run(project, "dvc", "exp", "run", *[arg for setting in FAST_RECIPE for arg in ("-S", setting)])
    champion = mlflow_client(project).get_model_version_by_alias("mnist-cnn", "champion")
    assert str(champion.version) == "2"
    return project


def served_env(project: Path, **extra: str) -> dict[str, str]:
    """A user's shell in the project, running the project's own code."""
    return environment(PYTHONPATH=str(project / "src"), **extra)


@pytest.fixture(scope="module")
def champion_server(project, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    command = [sys.executable, "predict.py", "--serve", "--mlflow-ui", MLFLOW_UI]
    with server(command, project, "/model", env=served_env(project), output=log) as port:
        yield port, log


@contextmanager
def browser(port: int):
    """A Chromium page on the server, and every address it asked for."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = chromium.new_page(viewport={"width": 900, "height": 720})
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("Model: ").wait_for(timeout=30000)
            yield page, asked
        finally:
            chromium.close()


def draw(page, strokes: list[list[tuple[int, int]]]) -> dict:
    """Draw `strokes` (canvas pixels) with the mouse; the answer to the last stroke's request, as the page got it."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / CANVAS_SIDE
    answer = None
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0] * scale, box["y"] + stroke[0][1] * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        with page.expect_response("**/predict") as response:
            page.mouse.up()
        answer = response.value.json()
    page.wait_for_function("digit => document.getElementById('digit').textContent === digit", arg=str(answer["digit"]))
    return answer


def drop(page, data: bytes, name: str, mime: str) -> dict:
    """Drop a file on the page's drop zone, as a file manager does; the answer to its request."""
    with page.expect_response("**/predict") as response:
        page.evaluate(
            """([encoded, name, mime]) => {
            const bytes = Uint8Array.from(atob(encoded), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop'])
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
            [base64.b64encode(data).decode(), name, mime],
        )
    return shown(page, response.value, name)


def shown(page, response, name: str) -> dict:
    """The answer in `response`, once the page shows it: the digit for the file `name`, or the error message."""
    from playwright.sync_api import expect

    answer = response.json()
    if response.status == 200:
        expect(page.locator("#digit")).to_have_text(str(answer["digit"]))
        expect(page.locator("#source")).to_have_text(re.compile(rf"^\d+\.\d% for {re.escape(name)}$"))
        expect(page.locator("#model")).to_contain_text(
            f"version {answer['model'].get('version')}" if answer["model"]["kind"] == "registered" else "checkpoint"
        )
    else:
        expect(page.locator("#message")).to_have_text(answer["error"])
    return answer


def seen_pixels(page) -> np.ndarray:
    """The 28x28 image the page shows as what the model saw."""
    rgba = page.evaluate(
        "() => Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data)"
    )
    return np.array(rgba, dtype=np.uint8).reshape(28, 28, 4)[..., 0]


def mnist_test_digit(index: int) -> tuple[np.ndarray, int]:
    from mnist_pipeline.data import IDX_LABELS_MAGIC, raw_images, read_idx

    labels = read_idx(MNIST_MIRROR / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    return raw_images(MNIST_MIRROR, train=False)[index], int(labels[index])


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_digits_drawn_with_the_mouse_are_answered_with_the_champion(project, champion_server):
    port, _ = champion_server
    assert listening_addresses(port) == {"127.0.0.1"}
    with browser(port) as (page, asked):
        for digit in (1, 7, 4):
            page.get_by_role("button", name="Clear").click()
            answer = draw(page, CANVAS_STROKES[digit])
            assert answer["digit"] == digit, f"drew a {digit}, the model said {answer['probabilities']}"
            assert page.locator("#digit").inner_text() == str(digit)
            assert page.locator("#bars li.best").get_attribute("data-digit") == str(digit)
            assert np.array_equal(seen_pixels(page), np.array(answer["pixels"], dtype=np.uint8))
        model = page.locator("#model").inner_text()
        run_link = page.get_by_role("link", name="the run in MLflow").get_attribute("href")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve.png"))
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            shutil.copy(ARTIFACTS / "serve.png", SCREENSHOT)
    client = mlflow_client(project)
    champion = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert f"mnist-cnn version 2 (alias champion), run {champion.run_id}" in model
    experiment = client.get_run(champion.run_id).info.experiment_id
    assert run_link == f"{MLFLOW_UI}/#/experiments/{experiment}/runs/{champion.run_id}"
    assert all(url.startswith(f"http://127.0.0.1:{port}/") for url in asked), asked  # nothing from the internet


def test_a_dropped_mnist_digit_and_a_large_photo_are_answered_with_what_the_model_saw(champion_server):
    port, _ = champion_server
    digit, label = mnist_test_digit(0)
    other, other_label = mnist_test_digit(1)
    photo = photo_of(other)
    assert 1e6 < len(photo) < MAX_UPLOAD_BYTES
    with browser(port) as (page, _):
        answer = drop(page, encoded(Image.fromarray(digit), "PNG"), "mnist-0.png", "image/png")
        assert answer["digit"] == label and page.locator("#digit").inner_text() == str(label)
        assert np.array_equal(seen_pixels(page), digit)  # an MNIST digit is already framed: the model sees it as is
        answer = drop(page, photo, "photo.jpg", "image/jpeg")
        assert answer["digit"] == other_label and page.locator("#digit").inner_text() == str(other_label)
        assert np.array_equal(seen_pixels(page), load_digit(photo, name="photo.jpg"))  # predict.py's framing
        assert page.locator("#message").is_hidden()


def test_a_text_file_an_empty_file_and_a_20_mb_file_each_get_one_message(champion_server, tmp_path):
    port, _ = champion_server
    files = {
        "notes.txt": b"milk, eggs, flour\n",
        "empty.png": b"",
        "huge.jpg": np.random.default_rng(0).integers(0, 256, 20 * 2**20, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    api = {name: post_image(port, data, name) for name, data in files.items()}
    assert [status for status, _ in api.values()] == [400, 400, 413]
    with browser(port) as (page, _):
        for name in files:
            with page.expect_response("**/predict") as response:
                page.set_input_files("#file", str(tmp_path / name))  # "choose a file"
            assert (response.value.status, shown(page, response.value, name)) == api[name]
            assert page.locator("#digit").inner_text() == "?"
    assert api["notes.txt"][1]["error"] == "notes.txt: not a readable image (not a PNG or JPEG file)"
    assert api["empty.png"][1]["error"] == "empty.png: not a readable image (the file is empty)"
    assert api["huge.jpg"][1]["error"] == "upload too large: more than 5 MB; send a smaller image"


def test_when_the_alias_moves_the_next_answer_names_the_new_version(project, champion_server):
    port, log = champion_server
    client = mlflow_client(project)
    digit, _ = mnist_test_digit(0)
    image = encoded(Image.fromarray(digit), "PNG")
    with browser(port) as (page, _):
        assert drop(page, image, "seven.png", "image/png")["model"]["version"] == "2"
        client.set_registered_model_alias("mnist-cnn", "champion", "1")
        try:
            moved = time.monotonic()
            while (answer := drop(page, image, "seven.png", "image/png"))["model"]["version"] != "1":
                assert time.monotonic() - moved < 30, "the server still answers with version 2 after 30 s"
                time.sleep(0.5)
            version_1 = client.get_model_version("mnist-cnn", "1")
            assert answer["model"]["run_id"] == version_1.run_id
            assert (
                f"mnist-cnn version 1 (alias champion), run {version_1.run_id}" in page.locator("#model").inner_text()
            )
        finally:
            client.set_registered_model_alias("mnist-cnn", "champion", "2")
    assert "serve: mnist-cnn@champion moved to version 1; answering with it" in log.read_text()


def test_a_checkpoint_is_served_without_any_mlflow_store(project, tmp_path):
    checkpoint = tmp_path / "model.pt"
    shutil.copy(project / "models" / "model.pt", checkpoint)
    alone = copy_project_code(project, tmp_path / "clone")  # the code only: no mlflow.db, no mlartifacts
    digit, label = mnist_test_digit(0)
    # A tracking URI nobody answers: a server that asked MLflow anything would fail or hang.
    env = served_env(alone, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    command = [sys.executable, "predict.py", "--serve", "--checkpoint", str(checkpoint)]
    with server(command, alone, "/model", env=env) as port, browser(port) as (page, _):
        md5 = hashlib.md5(checkpoint.read_bytes()).hexdigest()
        assert page.locator("#model").inner_text() == f"Model: checkpoint {checkpoint} (md5 {md5})"
        answer = drop(page, encoded(Image.fromarray(digit), "PNG"), "mnist-0.png", "image/png")
        assert answer["digit"] == label and page.locator("#digit").inner_text() == str(label)
        assert answer["model"]["kind"] == "checkpoint"
    assert not (alone / "mlflow.db").exists() and not (alone / "mlartifacts").exists()


def copy_project_code(project: Path, destination: Path) -> Path:
    """The project's files without its MLflow store (what a clone has before any `dvc repro`)."""
    shutil.copytree(project, destination, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", ".dvc", ".git"))
    return destination
