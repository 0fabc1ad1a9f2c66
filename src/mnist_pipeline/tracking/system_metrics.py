"""What the machine was doing while a training ran: CPU, memory, disk, network and NVIDIA GPUs, in MLflow's names.

The train stage samples once per epoch and logs the sample in the batch that holds the epoch's results
(runs.log_epoch), instead of running MLflow's sampling thread (`log_system_metrics=True`), for two reasons
seen with MLflow 3.17 (docs/design.md, Lineage):
- the thread logs its first sample one interval after the run starts and drops what it measured since its
  last sample when the run ends, so a training shorter than the interval had no system metrics at all;
- its first sample reached the run before the first epoch's results whenever an epoch outlasted the
  interval, and MLflow's compare view plots the first metric a run was given.
The names and units are those of MLflow's own monitors (`system/cpu_utilization_percentage`, ...), so the
UI's system-metric charts and searches find them. Imports psutil; a sampler imports nvidia-ml-py for the GPUs.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil

PREFIX = "system/"


def gpu_metrics_skipped() -> str | None:
    """Why the system metrics hold no GPU, in one line; None when NVML can read the GPUs."""
    try:
        import pynvml
    except ImportError:
        return "GPU metrics skipped: nvidia-ml-py is not installed (pip install -r requirements.txt)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"GPU metrics skipped: NVML cannot start ({exc})"
    return None


def _gpu_handles() -> list[Any]:
    """NVML's handle of every GPU on the machine; none without nvidia-ml-py or a driver that answers."""
    if gpu_metrics_skipped() is not None:
        return []
    import pynvml

    try:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return []


def _gpu_sample(index: int, handle: Any) -> dict[str, float]:
    """One GPU's memory, utilisation and power, in MLflow's GPU monitor's names; what it cannot report is left out."""
    import pynvml

    sample = {}
    with contextlib.suppress(pynvml.NVMLError):
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        sample[f"gpu_{index}_memory_usage_percentage"] = memory.used / memory.total * 100
        sample[f"gpu_{index}_memory_usage_megabytes"] = memory.used / 1e6
    with contextlib.suppress(pynvml.NVMLError):
        sample[f"gpu_{index}_utilization_percentage"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    with contextlib.suppress(pynvml.NVMLError):  # many GPUs report no power draw (NOT_SUPPORTED)
        milliwatts = pynvml.nvmlDeviceGetPowerUsage(handle)
        sample[f"gpu_{index}_power_usage_watts"] = milliwatts / 1000
        limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)
        sample[f"gpu_{index}_power_usage_percentage"] = milliwatts / limit * 100
    return sample


class Sampler:
    """Samples of the whole machine (not this process: a training under torchrun is several), keyed `system/...`.

    Each sample's CPU utilisation is the mean since the sample before, the first's since the sampler was made;
    memory, disk and GPUs are read when sampled; network traffic counts from the sampler's start. psutil
    keeps the CPU count per thread: make and use a sampler on one thread (the stage's main thread).
    """

    def __init__(self):
        psutil.cpu_percent()  # starts this thread's count: the first sample's CPU share covers the time from here
        self._network_at_start = psutil.net_io_counters()
        self._gpus = _gpu_handles()

    def sample(self) -> dict[str, float]:
        """CPU, memory, disk, network and GPU figures now, rounded to a tenth as MLflow's monitors round them."""
        memory, disk = psutil.virtual_memory(), psutil.disk_usage(os.sep)
        sample = {
            "cpu_utilization_percentage": psutil.cpu_percent(),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
            "disk_usage_percentage": disk.percent,
            "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
        }
        network = psutil.net_io_counters()
        if network is not None and self._network_at_start is not None:  # None: a machine without a network interface
            sample["network_receive_megabytes"] = (network.bytes_recv - self._network_at_start.bytes_recv) / 1e6
            sample["network_transmit_megabytes"] = (network.bytes_sent - self._network_at_start.bytes_sent) / 1e6
        for index, handle in enumerate(self._gpus):
            sample.update(_gpu_sample(index, handle))
        return {f"{PREFIX}{name}": round(value, 1) for name, value in sample.items()}
