"""What people look at, in a real browser, and the model served: MLflow's compare view, `dvc plots show`,
the registry's champion, `mlflow models serve` and `predict.py`.

Steps on one copy of the repository that has two runs: lr 0.01 (`dvc repro`) and lr 0.05 (`dvc exp run`).
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST_MIRROR, REPO_ROOT, prerequisite, requires_mnist_mirror
from dvc_project import all_runs, copy_project, environment, mlflow_client, run
from servers import listening_addresses, server

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]
needs_browser = prerequisite(
    Path(CHROMIUM).exists() and shutil.which("chromium"),
    f"Debian's Chromium ({CHROMIUM})",
    "apt-get install chromium chromium-driver (as .ci/run does)",
)


@pytest.fixture(scope="module")
def project(experimented_project, tmp_path_factory):
    return copy_project(experimented_project, tmp_path_factory.mktemp("browser"))


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            chromium.close()


@needs_browser
def test_mlflow_compare_view_shows_both_runs_their_lr_and_accuracy(project):
    runs = all_runs(project)
    assert len(runs) == 2
    experiment = mlflow_client(project).get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    names = [r.info.run_name for r in runs]
    experiment_id = runs[0].info.experiment_id
    mlflow_ui = Path(sys.executable).parent / "mlflow"
    # The README's command, on a free port.
    with server(
        [str(mlflow_ui), "ui", "--backend-store-uri", "sqlite:///mlflow.db"], project, "/health", env=environment()
    ) as port:
        assert listening_addresses(port) == {"127.0.0.1"}
        with browser() as page:
            # The address the README gives: the experiment with the model-training view asked for.
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}?workflowType=machine_learning")
            page.wait_for_url(f"**/#/experiments/{experiment_id}/runs?*", timeout=60000)
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60000)
                page.locator(".ag-row", has_text=name).first.get_by_role("checkbox").first.check()
            page.get_by_role("button", name="Compare").first.click()
            page.get_by_text("Comparing 2 Runs").first.wait_for(timeout=60000)
            params, metrics = parallel_coordinates_axes(page)
            scroll_metrics_to(page, "test_accuracy")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "mlflow-compare.png"))
            text = page.inner_text("body")
    # The view opens on what the runs are compared for: the plot at its top draws the params that differ against
    # a result, not a setting (`threads`, as it once was) nor what the machine was doing (issue 33).
    assert "lr" in params and metrics == ["test_accuracy"]
    for name in names:
        assert name in text
    assert "lr" in text and "0.01" in text and "0.05" in text
    assert "test_accuracy" in text
    for r in runs:  # rounded to three decimals, as the table shows them
        assert f"{round(r.data.metrics['test_accuracy'], 3):g}" in text


def parallel_coordinates_axes(page) -> tuple[list[str], list[str]]:
    """The params and the metrics whose axes the compare view's parallel-coordinates plot opened with.

    MLflow 3.17 picks up to three params that differ and one metric, the first key of the first run's
    metrics that every run has, and bolds the metrics' axis titles once the plot is drawn.
    """
    titles = ".pcp-plot .parcoords .y-axis .axis-heading .axis-title"
    page.wait_for_function(
        f"[...document.querySelectorAll('{titles}')].some(t => t.style.fontWeight === 'bold')", timeout=60000
    )
    axes = page.eval_on_selector_all(titles, "ts => ts.map(t => [t.textContent, t.style.fontWeight === 'bold'])")
    return [name for name, bold in axes if not bold], [name for name, bold in axes if bold]


def scroll_metrics_to(page, metric: str) -> None:
    """Scroll the compare view's metrics table down to `metric` with the mouse wheel, as a user does.

    MLflow draws only the metric rows in view, in alphabetical order: the evaluation's (`eval_...`), the
    stage timings and the system metrics (`system/...`) sort above test_accuracy, below the table's fold.
    The wheel scrolls the values; MLflow 3.17's column of names follows them one scroll event late, so a
    last one-pixel step brings the names level.
    """
    values = page.locator(".ReactVirtualized__Grid").nth(1)
    names = page.locator(".ReactVirtualized__Grid").first
    values.scroll_into_view_if_needed()
    box = values.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    row = names.get_by_text(metric, exact=True).first  # the plot above names its metric too
    for _ in range(60):
        page.mouse.wheel(0, 100)
        page.wait_for_timeout(150)
        if row.is_visible() and _inside(row.bounding_box(), names.bounding_box()):
            break
    page.mouse.wheel(0, -1)
    page.wait_for_timeout(500)
    assert _inside(row.bounding_box(), names.bounding_box()), f"{metric} is not in view in the metrics table"


def _inside(inner: dict | None, outer: dict | None) -> bool:
    return (
        bool(inner and outer)
        and outer["y"] <= inner["y"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"]
    )


VEGA_ASSETS = REPO_ROOT / "tests" / "browser_assets" / "node_modules"


def serve_cdn_scripts_locally(page, html: str) -> None:
    """DVC's page loads Vega from a CDN; answer those requests with the same versions installed by npm."""
    import re

    for url, package, version in re.findall(r'<script src="(https://cdn\.jsdelivr\.net/npm/([\w-]+)@([\d.]+))"', html):
        installed = json.loads((VEGA_ASSETS / package / "package.json").read_text())["version"]
        assert installed == version, f"DVC asks for {package}@{version}; tests/browser_assets has {installed}"
        script = (VEGA_ASSETS / package / "build" / f"{package}.min.js").read_text()
        page.route(url, _fulfill_with(script))


def _fulfill_with(script: str):
    return lambda route: route.fulfill(body=script, content_type="application/javascript")


@needs_browser
@prerequisite(
    VEGA_ASSETS.exists(),
    f"the Vega scripts ({VEGA_ASSETS.relative_to(REPO_ROOT)})",
    "npm ci --prefix tests/browser_assets (as .ci/run does)",
)
def test_dvc_plots_render_curves_confusion_and_mistakes(project):
    run(project, "dvc", "plots", "show")
    index = project / "dvc_plots" / "index.html"
    with browser() as page:
        serve_cdn_scripts_locally(page, index.read_text())
        page.goto(index.as_uri())
        page.wait_for_function(
            "document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length >= 3", timeout=60000
        )
        page.wait_for_timeout(1000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dvc-plots.png"), full_page=True)
        # Vega draws on canvases: each drawn chart is a canvas with real content (a blank one encodes tiny).
        drawn = page.eval_on_selector_all(".vega-embed canvas", "cs => cs.map(c => c.toDataURL().length)")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.src, i.naturalWidth])")
    assert len(drawn) >= 3 and all(size > 5000 for size in drawn), drawn
    html = index.read_text()
    assert "Test accuracy after each epoch" in html and "Loss per epoch" in html
    loaded = [Path(src).name for src, width in images if width > 0]  # e.g. workspace_plots_confusion.png
    assert any(name.endswith("confusion.png") for name in loaded) and any(
        name.endswith("mistakes.png") for name in loaded
    )


def test_the_best_run_is_the_registered_champion(project):
    client = mlflow_client(project)
    runs = all_runs(project)
    best = max(runs, key=lambda r: r.data.metrics["eval_accuracy"])
    champion = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert champion.run_id == best.info.run_id


def _test_pixels(n: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist_pipeline.data import IDX_LABELS_MAGIC, raw_images, read_idx

    labels = read_idx(MNIST_MIRROR / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)[:n]
    return raw_images(MNIST_MIRROR, train=False)[:n], labels


def _champion_predictions(project: Path, pixels: np.ndarray) -> np.ndarray:
    import mlflow.pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/mnist-cnn@champion")
    return np.asarray(model.predict(pixels[:, None].astype(np.float32))).argmax(axis=1)


def test_served_champion_answers_invocations_with_real_digits(project):
    pixels, labels = _test_pixels(8)
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    env = environment(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    command = [
        str(mlflow_cli),
        "models",
        "serve",
        "-m",
        "models:/mnist-cnn@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
    ]
    with server(command, project, "/ping", env=env) as port:
        assert listening_addresses(port) == {"127.0.0.1"}
        body = json.dumps({"inputs": pixels[:, None].astype(np.float32).tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            probabilities = np.asarray(json.loads(response.read())["predictions"])
    assert probabilities.shape == (8, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    served = probabilities.argmax(axis=1)
    assert served.tolist() == _champion_predictions(project, pixels).tolist()
    assert (served == labels).mean() >= 0.75


def test_predict_command_classifies_pngs_with_the_champion_and_a_checkpoint(project, tmp_path):
    from PIL import Image

    pixels, labels = _test_pixels(8)
    paths = []
    for i, image in enumerate(pixels):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(image, mode="L").save(path)
        paths.append(str(path))
    expected = _champion_predictions(project, pixels).tolist()

    champion = run(project, sys.executable, "predict.py", *paths)
    lines = champion.stdout.strip().splitlines()
    assert [int(line.split(": ")[1].split()[0]) for line in lines] == expected
    assert all(line.startswith(f"{p}: ") and line.endswith("%)") for line, p in zip(lines, paths, strict=True))

    from_checkpoint = run(project, sys.executable, "predict.py", "--checkpoint", "models/model.pt", *paths)
    lines = from_checkpoint.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == paths
    predicted = np.array([int(line.split(": ")[1].split()[0]) for line in lines])
    # The checkpoint's own answers on these pixels, and mostly the digits' labels (it trained on a slice).
    from mnist_pipeline.serving.classifier import probabilities_from_checkpoint

    assert predicted.tolist() == probabilities_from_checkpoint(pixels, project / "models/model.pt").argmax(1).tolist()
    assert (predicted == labels).mean() >= 0.75

    missing = run(project, sys.executable, "predict.py", str(tmp_path / "nope.png"), check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope.png'}: no such file"
