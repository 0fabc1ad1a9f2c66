"""What the machine was doing: samples in MLflow's own system-metric names, a CPU share since the sample before."""

import sys
import threading
import time
import types

import pytest

from mnist_pipeline.tracking import runs, store, system_metrics


def _mlflow_monitor_names(*monitors) -> set[str]:
    """The names MLflow's own monitors give one sample (the reference: the UI's system-metric charts use them)."""
    names = set()
    for monitor in monitors:
        monitor.collect_metrics()
        names.update(f"system/{name}" for name in monitor.aggregate_metrics())
    return names


def test_a_sample_has_mlflows_names_and_plausible_values():
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    sample = system_metrics.Sampler().sample()
    expected = _mlflow_monitor_names(CPUMonitor(), DiskMonitor(), NetworkMonitor())
    gpus = {name for name in sample if name.startswith("system/gpu_")}  # only where a driver answers
    assert set(sample) - gpus == expected
    assert 0 <= sample["system/cpu_utilization_percentage"] <= 100
    assert sample["system/system_memory_usage_megabytes"] > 0
    assert 0 < sample["system/system_memory_usage_percentage"] <= 100
    assert 0 <= sample["system/disk_usage_percentage"] <= 100 and sample["system/disk_available_megabytes"] > 0
    assert all(isinstance(value, float) for value in sample.values())


def test_the_first_samples_cpu_share_covers_the_time_since_the_sampler_was_made():
    """psutil counts CPU time per thread from its last call there: without a count started by the sampler, a fresh
    thread's first sample covers no time at all and reads 0.0, whatever the work done in between."""
    shares = []

    def sample_after_work():
        sampler = system_metrics.Sampler()
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:  # 0.3 s of this process's CPU: the machine was not idle
            pass
        shares.append(sampler.sample()["system/cpu_utilization_percentage"])

    thread = threading.Thread(target=sample_after_work)
    thread.start()
    thread.join()
    assert shares[0] > 0


class _FakeNvml(types.ModuleType):
    """nvidia-ml-py's calls as a machine with two GPUs answers them, the second reporting no power draw."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=4e9 * (handle + 1), total=16e9)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=90 - handle)

    def nvmlDeviceGetPowerUsage(self, handle):
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return 350_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000


def test_gpus_are_sampled_in_mlflows_names_and_what_a_gpu_cannot_report_is_left_out(monkeypatch):
    from mlflow.system_metrics.metrics import gpu_monitor

    nvml = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpu_monitor, "pynvml", nvml, raising=False)
    sample = system_metrics.Sampler().sample()
    gpus = {name: value for name, value in sample.items() if name.startswith("system/gpu_")}
    assert set(gpus) == _mlflow_monitor_names(gpu_monitor.GPUMonitor()) - {
        "system/gpu_1_power_usage_watts",
        "system/gpu_1_power_usage_percentage",
    }
    assert gpus["system/gpu_0_memory_usage_percentage"] == 25.0
    assert gpus["system/gpu_1_memory_usage_megabytes"] == 8000.0
    assert gpus["system/gpu_0_utilization_percentage"] == 90.0
    assert gpus["system/gpu_0_power_usage_watts"] == 350.0 and gpus["system/gpu_0_power_usage_percentage"] == 50.0


def _nvml(init_error: str | None):
    """A stand-in for nvidia-ml-py whose nvmlInit fails with `init_error`, or starts."""
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if init_error:
            raise NVMLError(init_error)

    nvml.NVMLError, nvml.nvmlInit = NVMLError, init
    return nvml


@pytest.mark.parametrize(
    "nvml, note",
    [
        (None, "GPU metrics skipped: nvidia-ml-py is not installed (pip install -r requirements.txt)"),
        (_nvml("Driver Not Loaded"), "GPU metrics skipped: NVML cannot start (Driver Not Loaded)"),
        (_nvml(None), None),
    ],
    ids=["no-nvidia-ml-py", "no-driver", "a-driver"],
)
def test_missing_gpu_metrics_are_explained_in_one_line(monkeypatch, nvml, note):
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # None: the import fails, as without the package
    assert system_metrics.gpu_metrics_skipped() == note


def test_a_run_shorter_than_any_sampling_interval_has_system_metrics(local_store, monkeypatch):
    """A two-epoch training on 4,000 images had none: MLflow's thread logs a sample one interval after the start
    (5 s) and drops the last. The stage's way, a sample with each epoch's results, owes nothing to that interval."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    client, experiment_id = store.connect("exp-s")
    with runs.training_run(experiment_id, {}) as run_id:
        machine = system_metrics.Sampler()
        for epoch in (1, 2):
            runs.log_epoch({"train_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9, **machine.sample()}, epoch)
    for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2]  # one sample per epoch, at its step
    assert list(client.get_run(run_id).data.metrics)[0] == "test_accuracy"
