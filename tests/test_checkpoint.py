import pickle

import pytest
import torch

from mnist_pipeline import checkpoint as checkpoint_module
from mnist_pipeline.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from mnist_pipeline.config import parse_config
from mnist_pipeline.model import ModelConfig, build_model


def _save(path, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    model(torch.zeros(1, 1, 28, 28)).sum().backward()
    optimizer.step()  # so that the optimizer has momentum buffers to save
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=3, model_config=ModelConfig(),
                    config=parse_config({"lr": 0.01}).to_dict())
    return model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    path = tmp_path / "models" / "model.pt"
    model = _save(path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3
    assert loaded["config"]["lr"] == 0.01 and loaded["config"]["data"]["max_train_images"] is None
    assert "momentum_buffer" in loaded["optimizer_state"]["state"][0]
    rebuilt = model_from_checkpoint(loaded)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt(x), model(x))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    _save(path, seed=0)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError) as caught:
        _save(path, seed=1)
    assert str(caught.value) == (
        f"{path}: cannot write the checkpoint (No space left on device); the previous checkpoint is kept"
    )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=r"models/model.pt: cannot write the checkpoint \(File exists\)"):
        _save(blocker / "model.pt")


def test_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint; run the train stage first"):
        load_checkpoint(tmp_path / "model.pt")


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.marker),))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model_state": _Payload()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload()))  # the payload is real: unpickled freely, it runs
    assert marker.exists()
