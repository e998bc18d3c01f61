"""GPU readings through NVML: one table of fields drives one sampling function.

NVML is initialised once, its handles fetched once, and shut down once. The NVML module is an
argument so that tests without a GPU can hand in a fake; production code passes nothing and
gets `pynvml` (package nvidia-ml-py). Without NVML or without GPUs, `available` is False and
`reason` says why; nothing here raises into a training job.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuField:
    """One contract field: which NVML call gives it, with which constant arguments, in which unit."""

    name: str
    call: str
    unit: str
    convert: Callable[[Any], Any]
    constants: tuple[str, ...] = ()


def _milli(value: Any) -> float:
    return float(value) / 1000.0


GPU_FIELDS: tuple[GpuField, ...] = (
    GpuField("utilization_pct", "nvmlDeviceGetUtilizationRates", "%", lambda r: float(r.gpu)),
    GpuField("memory_used_bytes", "nvmlDeviceGetMemoryInfo", "bytes", lambda r: int(r.used)),
    GpuField("memory_total_bytes", "nvmlDeviceGetMemoryInfo", "bytes", lambda r: int(r.total)),
    GpuField("power_w", "nvmlDeviceGetPowerUsage", "W", _milli),
    GpuField("power_limit_w", "nvmlDeviceGetEnforcedPowerLimit", "W", _milli),
    GpuField("temperature_c", "nvmlDeviceGetTemperature", "°C", float, ("NVML_TEMPERATURE_GPU",)),
    GpuField("sm_clock_mhz", "nvmlDeviceGetClockInfo", "MHz", int, ("NVML_CLOCK_SM",)),
    GpuField("memory_clock_mhz", "nvmlDeviceGetClockInfo", "MHz", int, ("NVML_CLOCK_MEM",)),
    GpuField("throttle_reasons", "nvmlDeviceGetCurrentClocksEventReasons", "bitmask", int),
)


def _memory_total(nvml: Any, handle: Any) -> int:
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).total)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlGpus:
    """The GPUs of this host as NVML sees them."""

    def __init__(self, nvml: Any | None = None, *, process_ids: Callable[[], set[int]] | None = None) -> None:
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[tuple[int, Any, str, str]] = []  # (index, handle, uuid, model)
        self._unsupported: set[tuple[int, str]] = set()
        self._process_ids = process_ids or (lambda: {os.getpid()})
        try:
            self._nvml = nvml if nvml is not None else importlib.import_module("pynvml")
            self._nvml.nvmlInit()
        except Exception as error:  # no library, no driver, no permission: all mean "no GPU readings"
            self.reason = f"NVML unavailable: {type(error).__name__}: {error}"
            self._nvml = None
            return
        try:
            for index in range(int(self._nvml.nvmlDeviceGetCount())):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(self._nvml.nvmlDeviceGetUUID(handle))
                model = _text(self._nvml.nvmlDeviceGetName(handle))
                self._handles.append((index, handle, uuid, model))
        except Exception as error:
            self.reason = f"NVML could not list GPUs: {type(error).__name__}: {error}"
            self.close()
            return
        if not self._handles:
            self.reason = "NVML found no GPUs"
            self.close()
            return
        self.available = True

    @property
    def count(self) -> int:
        return len(self._handles)

    def inventory(self) -> dict[str, Any]:
        """Driver and CUDA versions and one entry per GPU, for the run's hardware record."""
        if not self.available:
            return {"gpu_driver_version": None, "cuda_version": None, "gpus": []}
        nv = self._nvml
        driver = self._try(lambda: _text(nv.nvmlSystemGetDriverVersion()))
        cuda_raw = self._try(lambda: int(nv.nvmlSystemGetCudaDriverVersion()))
        cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if cuda_raw else None
        gpus = []
        for index, handle, uuid, model in self._handles:
            total = self._try(partial(_memory_total, nv, handle))
            gpus.append({"index": index, "uuid": uuid, "model": model, "memory_total_bytes": total})
        return {"gpu_driver_version": driver, "cuda_version": cuda, "gpus": gpus}

    def sample(self, time_us: int) -> list[dict[str, Any]]:
        """One `GpuSample` per GPU; a field NVML does not support on a GPU is null from then on."""
        if not self.available:
            return []
        nv = self._nvml
        samples = []
        ours = self._process_ids()
        for index, handle, uuid, model in self._handles:
            sample: dict[str, Any] = {"time_us": time_us, "gpu_index": index, "gpu_uuid": uuid, "gpu_model": model}
            results: dict[tuple[str, tuple[str, ...]], Any] = {}
            for field in GPU_FIELDS:
                sample[field.name] = None
                if (index, field.name) in self._unsupported:
                    continue
                key = (field.call, field.constants)
                try:
                    if key not in results:
                        args = [getattr(nv, name) for name in field.constants]
                        results[key] = getattr(nv, field.call)(handle, *args)
                    sample[field.name] = field.convert(results[key])
                except Exception as error:
                    self._unsupported.add((index, field.name))
                    log.debug("GPU %d: %s unavailable (%s); not read again", index, field.name, error)
            sample["process_memory_bytes"] = self._process_memory(handle, ours, index)
            samples.append(sample)
        return samples

    def _process_memory(self, handle: Any, ours: set[int], index: int) -> int | None:
        if (index, "process_memory_bytes") in self._unsupported:
            return None
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception as error:
            self._unsupported.add((index, "process_memory_bytes"))
            log.debug("GPU %d: process list unavailable (%s)", index, error)
            return None
        used = [p.usedGpuMemory for p in processes if p.pid in ours and p.usedGpuMemory is not None]
        return int(sum(used)) if used else 0

    def _try(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception:
            return None

    def close(self) -> None:
        """Shut NVML down once; later calls do nothing."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as error:
                log.debug("nvmlShutdown failed: %s", error)
            self._nvml = None
        self.available = False
