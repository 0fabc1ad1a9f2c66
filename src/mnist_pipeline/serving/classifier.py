"""The trained model as a function from framed pixels (N, 28, 28) to the ten class probabilities (N, 10):
from a training checkpoint (torch alone, no MLflow) or from a logged or registered MLflow model.
predict.py and the page of predict.py --serve both answer through it.

An MLflow model is loaded only when it is what the train stage logs: MLflow's PyTorch flavour holding
torch.export's pt2 archive and nothing else, checked before anything of it is loaded. Anything else
(a pickled PythonModel, a pickled torch model, code shipped with the model) can run its author's code
in the loading process, and whoever can move the champion alias would run it on every server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import PipelineError

PT2_ARCHIVE = "model.pt2"  # mlflow.pytorch's file for a model saved with serialization_format="pt2"
LOGGED_FLAVORS = {"python_function", "pytorch"}  # what runs.log_model writes into the model's MLmodel
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class ModelRefused(PipelineError):
    """An MLflow model that is not the pt2 archive the project logs: nothing of it was loaded."""

    def __init__(self, model_uri: str, reason: str):
        super().__init__(f"{model_uri}: refused, not a model this project logs ({reason}); nothing of it was loaded")
        self.reason = reason


def probabilities_from_checkpoint(pixels: np.ndarray, checkpoint_path: str | Path) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a training checkpoint."""
    return checkpoint_classifier(checkpoint_path)[0](pixels)


def checkpoint_classifier(checkpoint_path: str | Path):
    """(probabilities, md5): a function from raw pixels (N, 28, 28) to class probabilities (N, 10), loaded once
    from a training checkpoint, and the checkpoint's MD5, as dvc.lock records it. Imports no MLflow."""
    import torch

    from mnist_pipeline.checkpoint import load_checkpoint, model_from_checkpoint, require_complete
    from mnist_pipeline.config import parse_config
    from mnist_pipeline.model import DigitClassifier

    checkpoint = load_checkpoint(checkpoint_path)
    require_complete(checkpoint, checkpoint_path)
    data = parse_config(checkpoint["config"]).data
    classifier = DigitClassifier(model_from_checkpoint(checkpoint), data.mean, data.std).eval()

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            # A copy: the pixels may be read-only (MNIST read with np.frombuffer, for one), which
            # torch.from_numpy warns about.
            return classifier(torch.tensor(pixels).unsqueeze(1)).numpy()

    return probabilities, hashlib.md5(Path(checkpoint_path).read_bytes()).hexdigest()


def probabilities_from_mlflow(pixels: np.ndarray, model_uri: str) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a logged or registered MLflow model."""
    return mlflow_classifier(model_uri)(pixels)


def mlflow_classifier(model_uri: str):
    """A function from raw pixels (N, 28, 28) to class probabilities (N, 10): a logged or registered MLflow
    model (runs:/..., models:/...), loaded once from the store MLFLOW_TRACKING_URI or the project names.

    The model's files are downloaded to a temporary folder and checked (`logged_model_problem`) before
    anything of them is loaded; the checked copy is the one loaded. Raises ModelRefused otherwise.
    """
    import mlflow

    from mnist_pipeline.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as scratch:
        try:
            with _environment("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):  # a server's log: no progress bars
                folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        except mlflow.exceptions.MlflowException as exc:
            raise PipelineError(
                f"{model_uri}: cannot load the model ({str(exc).splitlines()[0]}); "
                "run dvc repro first, or pass --checkpoint models/model.pt"
            ) from None
        problem = logged_model_problem(folder)
        if problem:
            raise ModelRefused(model_uri, problem)
        network = _load_pt2(model_uri, folder, Path(scratch) / "loaded")

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return network(torch.tensor(pixels[:, None], dtype=torch.float32)).numpy()

    return probabilities


def logged_model_problem(folder: Path) -> str | None:
    """What makes the MLflow model in `folder` other than what runs.log_model logs, in a few words; None if nothing.

    Read from its MLmodel file (YAML, read safely) and its file list only: the PyTorch flavour and its
    python_function loader (mlflow.pytorch), no code or extra files shipped, and the flavour's data
    folder holding the pt2 archive alone (a pickled model is model.pth beside pickle_module_info.txt).
    """
    import yaml

    try:
        description = yaml.safe_load((folder / "MLmodel").read_text())
    except FileNotFoundError:
        return "no MLmodel file"
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "its MLmodel file is not YAML"
    flavors = description.get("flavors") if isinstance(description, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != LOGGED_FLAVORS:
        named = ", ".join(sorted(flavors)) if isinstance(flavors, dict) else "none"
        return f"flavors {named}; the project logs {' and '.join(sorted(LOGGED_FLAVORS))}"
    pyfunc, pytorch = flavors["python_function"], flavors["pytorch"]
    if not isinstance(pyfunc, dict) or not isinstance(pytorch, dict):
        return "its MLmodel file is malformed"
    if pyfunc.get("loader_module") != "mlflow.pytorch":
        return f"loader {pyfunc.get('loader_module')}, not mlflow.pytorch"
    if pyfunc.get("code") or pytorch.get("code") or pytorch.get("extra_files"):
        return "it ships code or extra files"
    data = (folder / str(pytorch.get("model_data", ""))).resolve()
    if folder.resolve() not in data.parents or not data.is_dir():
        return "its data folder is missing"
    files = sorted(path.name for path in data.iterdir())
    if files != [PT2_ARCHIVE]:
        return f"its data is {', '.join(files) or 'empty'}, not torch.export's {PT2_ARCHIVE} alone"
    return None


def _load_pt2(model_uri: str, folder: Path, scratch: Path):
    """The network in a checked model folder, as torch.export's module, on the CPU."""
    import mlflow
    import mlflow.pytorch

    scratch.mkdir()
    # torch.export.load unpickles whatever in a pt2 archive is not plain tensor data; MLflow checks an archive
    # for such records before it loads one only when MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false, and its
    # default is true. The project's archives hold none.
    with _environment(PICKLE_SWITCH, "false"):
        try:
            return mlflow.pytorch.load_model(str(folder), dst_path=str(scratch))
        except mlflow.exceptions.MlflowException as exc:
            first_line = str(exc).splitlines()[0]
            if "pickle" in first_line:
                raise ModelRefused(model_uri, f"its pt2 archive carries a pickle: {first_line}") from None
            raise PipelineError(f"{model_uri}: cannot load the model ({first_line})") from None


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name` set to `value` while the block runs. Nothing else in predict.py or the server reads this one."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
