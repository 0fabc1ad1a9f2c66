"""The trained model as a function from pixels to probabilities (classifier.py), and what it refuses to load."""

import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.classifier import probabilities_from_checkpoint

from conftest import logged_planted_model, logged_project_model, untrained_checkpoint


def test_checkpoint_probabilities_take_read_only_pixels_quietly(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "model.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    pixels.flags.writeable = False  # as MNIST's digits are, read with np.frombuffer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities = probabilities_from_checkpoint(pixels, checkpoint)
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


# MLflow models that could run their author's code when loaded: each must be refused, with nothing of it run.


class PlantedPickle:
    """Writes a file when it is unpickled or loaded: the code a model's author could run on every server."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('planted')",)


def refusal_of(model_uri: str) -> str:
    from mnist_pipeline.serving.classifier import mlflow_classifier

    with pytest.raises(PipelineError) as raised:
        mlflow_classifier(model_uri)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_the_projects_logged_model_answers_as_the_network_it_was_logged_from(local_store):
    import torch

    from mnist_pipeline.serving.classifier import mlflow_classifier

    model_uri, network = logged_project_model("exp-load")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        expected = network(torch.tensor(pixels[:, None], dtype=torch.float32)).numpy()
    assert np.allclose(mlflow_classifier(model_uri)(pixels), expected, atol=1e-6)


def test_a_python_model_is_refused_before_any_of_its_code_runs(local_store, tmp_path):
    """The issue's probe: a pickled PythonModel whose load_context wrote a file, run by every serving machine."""
    planted = tmp_path / "planted"
    model_uri = logged_planted_model("exp-planted", planted)
    assert refusal_of(model_uri) == (
        f"{model_uri}: refused, not a model this project logs (flavors python_function; "
        "the project logs python_function and pytorch); nothing of it was loaded"
    )
    assert not planted.exists()


def test_a_pickled_torch_model_is_refused(local_store, tmp_path):
    import mlflow
    import mlflow.pytorch
    import torch

    from mnist_pipeline.tracking import store

    _, experiment_id = store.connect("exp-pickled")
    with mlflow.start_run(experiment_id=experiment_id):
        model_uri = mlflow.pytorch.log_model(
            torch.nn.Flatten(), name="model", serialization_format="pickle", pip_requirements=[]
        ).model_uri
    assert refusal_of(model_uri) == (
        f"{model_uri}: refused, not a model this project logs (its data is model.pth, "
        "pickle_module_info.txt, not torch.export's model.pt2 alone); "
        "nothing of it was loaded"
    )


def test_a_pt2_archive_carrying_a_pickle_is_refused_before_torch_reads_it(local_store, tmp_path):
    """torch.export.load unpickles an archive's sample inputs: a planted pickle there ran when the model was loaded."""
    import mlflow

    model_uri, _ = logged_project_model("exp-pt2")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "download")))
    planted = tmp_path / "planted"
    archive = folder / "data" / "model.pt2"
    original = archive.with_suffix(".original")
    shutil.move(archive, original)
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(archive, "w") as rewritten:
        for record in source.infolist():
            payload = source.read(record)
            rewritten.writestr(
                record,
                pickle.dumps(PlantedPickle(planted)) if record.filename.endswith("sample_inputs/model.pt") else payload,
            )
    original.unlink()
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("exp-pt2").experiment_id) as run:
        mlflow.log_artifacts(str(folder), "model")
    refused = refusal_of(f"runs:/{run.info.run_id}/model")
    assert refused.startswith(
        f"runs:/{run.info.run_id}/model: refused, not a model this project logs (its pt2 archive "
        "carries a pickle: Deserializing model using pickle is disallowed, but record "
        "'model/data/sample_inputs/model.pt'"
    )
    assert not planted.exists()
