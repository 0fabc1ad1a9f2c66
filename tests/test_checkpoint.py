import pickle

import pytest
import torch

from mnist_pipeline import checkpoint as checkpoint_module
from mnist_pipeline.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    require_complete,
    restore_training,
    resume_decision,
    resume_point,
    save_checkpoint,
)
from mnist_pipeline.config import TrainConfig, parse_config
from mnist_pipeline.data import Split
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.records import EpochResult
from mnist_pipeline.training import compute_for, make_optimizer, make_schedule, prepare, train

from conftest import requires_c_compiler

HISTORY = [EpochResult(1, 0.5, 0.4, 0.9), EpochResult(2, 0.3, 0.2, 0.95), EpochResult(3, 0.2, 0.1, 0.97)]


def _save(path, seed=0, epochs_done=3, params=None):
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    model(torch.zeros(1, 1, 28, 28)).sum().backward()
    optimizer.step()  # so that the optimizer has momentum buffers to save
    save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(seed),
        model_config=ModelConfig(),
        config=parse_config(params or {"epochs": 3}).to_dict(),
        history=HISTORY[:epochs_done],
    )
    return model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    path = tmp_path / "models" / "model.pt"
    model = _save(path)
    loaded = load_checkpoint(path)
    assert (loaded["epoch"], loaded["complete"]) == (3, True)
    assert loaded["config"]["epochs"] == 3 and loaded["config"]["data"]["max_train_images"] is None
    # What cannot change the numbers stays out, and so does the MLflow run id: a result, not a log.
    assert not {"threads", "plots", "paths", "tracking", "mlflow_run_id"} & (set(loaded) | set(loaded["config"]))
    assert "momentum_buffer" in loaded["optimizer_state"]["state"][0]
    assert [EpochResult(**row) for row in loaded["history"]] == HISTORY
    rebuilt = model_from_checkpoint(loaded)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt(x), model(x))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    _save(path, seed=0)
    before = path.read_bytes()

    real_write = checkpoint_module.Path.write_bytes

    def disk_full(self, data):
        real_write(self, b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.Path, "write_bytes", disk_full)
    with pytest.raises(CheckpointError) as caught:
        _save(path, seed=1)
    assert str(caught.value) == (
        f"{path}: cannot write the checkpoint (No space left on device); the previous checkpoint is kept"
    )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_the_same_training_writes_the_same_bytes_under_any_file_name(tmp_path):
    """torch.save names an archive's records after the file it writes: the checkpoint must not carry that name."""
    _save(tmp_path / "one.pt")
    _save(tmp_path / "two" / "model.pt", params={"epochs": 3, "threads": 1, "plots": {"dpi": 50}})
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two" / "model.pt").read_bytes()


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


def test_an_unfinished_checkpoint_is_not_a_result(tmp_path):
    _save(tmp_path / "model.pt", epochs_done=2)
    with pytest.raises(CheckpointError, match="training stopped after epoch 2 of 3; run dvc repro to finish it"):
        require_complete(load_checkpoint(tmp_path / "model.pt"), tmp_path / "model.pt")


@pytest.mark.parametrize(
    "params, epochs_done, resumes, reason",
    [
        ({"epochs": 3}, 2, True, "resuming after epoch 2 of 3 from the unfinished checkpoint"),
        ({"epochs": 3, "plots": {"dpi": 50}}, 2, True, "resuming after epoch 2"),  # plots cannot change training
        ({"epochs": 3, "threads": 1}, 2, True, "resuming after epoch 2"),  # nor the rounding order of the rest
        ({"epochs": 3, "tracking": {"experiment": "other"}}, 2, True, "resuming after epoch 2"),  # nor where it logs
        ({"epochs": 3}, 3, False, "the checkpoint holds a finished training; training from scratch"),
        (
            {"epochs": 3, "lr": 0.05},
            2,
            False,
            "params changed since the unfinished checkpoint (lr 0.01 -> 0.05); training from scratch",
        ),
        ({"epochs": 4}, 2, False, "params changed since the unfinished checkpoint (epochs 3 -> 4)"),
    ],
)
def test_resume_only_an_unfinished_checkpoint_of_the_same_params(tmp_path, params, epochs_done, resumes, reason):
    _save(tmp_path / "model.pt", epochs_done=epochs_done)
    decision = resume_decision(load_checkpoint(tmp_path / "model.pt"), parse_config(params).to_dict())
    assert decision[0] is resumes and decision[1].startswith(reason)


def test_no_checkpoint_trains_from_scratch():
    assert resume_decision(None, parse_config({}).to_dict()) == (False, "no checkpoint yet; training from scratch")


def _toy_split(n=64):
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("kernels", ["torch", pytest.param("auto", marks=requires_c_compiler())])
def test_interrupted_and_resumed_training_is_bit_identical_to_an_uninterrupted_one(tmp_path, kernels):
    threads_before = torch.get_num_threads()
    try:
        _interrupted_and_resumed(tmp_path, kernels)
    finally:
        torch.set_num_threads(threads_before)  # compute_for set torch to one thread for the shards


def _interrupted_and_resumed(tmp_path, kernels):
    split = _toy_split()
    config = parse_config({"lr": 0.05, "batch_size": 16, "epochs": 4, "seed": 5, "kernels": kernels})
    cpu = torch.device("cpu")
    compute = compute_for(config.train, cpu)  # in shards, torch on one thread: as the train stage trains

    def save(setup, history, path):
        save_checkpoint(
            path,
            model=setup.model,
            optimizer=setup.optimizer,
            generator=setup.generator,
            model_config=setup.model_config,
            config=config.to_dict(),
            history=history,
            schedule=setup.schedule,
        )

    straight = prepare(config.train, cpu, len(split))
    assert straight.own_kernels == (kernels == "auto")
    straight_history = train(straight, split, split, config.train, compute=compute)
    save(straight, straight_history, tmp_path / "straight.pt")

    # First process: set up as the stage does, save after every epoch, "killed" after epoch 2.
    path = tmp_path / "model.pt"
    first = prepare(config.train, cpu, len(split))

    class Killed(Exception):
        pass

    def save_then_maybe_die(history):
        save(first, history, path)
        if len(history) == 2:
            raise Killed

    with pytest.raises(Killed):
        train(first, split, split, config.train, compute=compute, on_epoch_end=save_then_maybe_die)

    # Second process: everything set up afresh, then restored from the checkpoint.
    start = resume_point(path, config.to_dict())
    assert start.checkpoint is not None
    assert start.lines == ("resuming after epoch 2 of 4 from the unfinished checkpoint",)
    resumed = prepare(config.train, cpu, len(split), checkpoint=start.checkpoint)
    resumed_history = train(resumed, split, split, config.train, compute=compute)

    assert resumed_history == straight_history
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    save(resumed, resumed_history, path)
    assert path.read_bytes() == (tmp_path / "straight.pt").read_bytes()


def test_an_unreadable_checkpoint_trains_from_scratch_and_says_why(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    start = resume_point(tmp_path / "model.pt", parse_config({}).to_dict())
    assert start.checkpoint is None
    assert start.lines[0].startswith(f"ignoring {tmp_path / 'model.pt'}: not a loadable checkpoint (")
    assert start.lines[1] == "no checkpoint yet; training from scratch"


@pytest.mark.parametrize("schedule_name", ["onecycle", "cosine"])
def test_the_learning_rate_schedule_resumes_where_it_stopped(tmp_path, schedule_name):
    config = TrainConfig(model="compact", optimizer="adamw", schedule=schedule_name, lr=0.01, epochs=3)
    model_config = ModelConfig(architecture="compact")
    model = build_model(model_config)
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, steps=5)
    for _ in range(7):
        optimizer.step()
        schedule.step()
    save_checkpoint(
        tmp_path / "model.pt",
        model=model,
        optimizer=optimizer,
        generator=torch.Generator(),
        model_config=model_config,
        config=parse_config({"epochs": 3}).to_dict(),
        history=HISTORY[:1],
        schedule=schedule,
    )
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(model_from_checkpoint(loaded), type(model))  # rebuilt as the architecture it was trained as
    fresh = build_model(model_config)
    fresh_optimizer = make_optimizer(fresh, config)
    fresh_schedule = make_schedule(fresh_optimizer, config, steps=5)
    restore_training(loaded, fresh, fresh_optimizer, torch.Generator(), fresh_schedule)
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    for _ in range(3):
        for opt, sched in ((optimizer, schedule), (fresh_optimizer, fresh_schedule)):
            opt.step()
            sched.step()
        assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
