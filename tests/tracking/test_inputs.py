"""The data a run trained on, as MLflow dataset inputs with DVC's digest."""

import json

from mnist_pipeline.tracking import inputs, lineage, runs, store


def test_the_data_is_logged_as_two_dataset_inputs_named_by_slice_with_dvcs_digest(local_store, tmp_path):
    data_dir = tmp_path / "data" / "mnist"
    data_dir.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (data_dir / name).write_bytes(name.encode())
    client, experiment_id = store.connect("exp-i")
    digest = lineage.DataDigest("b6c29e96813679dd8c451c9b5ca86e2c.dir", "dvc.lock")  # 36 characters: MLflow's limit
    with runs.training_run(experiment_id, {}) as run_id:
        inputs.log_data_inputs(str(data_dir), digest, {"training": 2000, "test": None})
    logged = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
        for i in client.get_run(run_id).inputs.dataset_inputs
    }
    training, test = logged["training"], logged["test"]
    assert (training.dataset.name, test.dataset.name) == ("mnist-training[:2000]", "mnist-test")
    assert training.dataset.digest == test.dataset.digest == digest.md5
    assert json.loads(training.dataset.source)["files"] == [
        f"{data_dir.as_posix()}/train-images-idx3-ubyte.gz",
        f"{data_dir.as_posix()}/train-labels-idx1-ubyte.gz",
    ]
    assert {t.key: t.value for t in test.tags}["images"] == "all"
