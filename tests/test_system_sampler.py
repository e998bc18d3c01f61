"""GPU and host sampling. The NVML here is a FAKE, because this machine has no GPU: it is the only
fake in the suite, standing in for the driver library behind the same calls pynvml makes. The
real library is exercised on a lent H100/H200 by bench/gpu_sampler_check.py (see the README)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from spool_reader import spooled

from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.producer.gpu import GPU_FIELDS, NvmlGpus
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings


class NotSupported(Exception):
    pass


class FakeNvml:
    """Two GPUs; GPU 1 does not report throttle reasons (as some boards do not)."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.inits = 0
        self.shutdowns = 0
        self.handle_lookups = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.handle_lookups += 1
        return index

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-fake-{h}".encode()

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "560.35.03"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12060

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=90 + h, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=(10 + h) * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 612_500

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 700_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 71

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        if h == 1:
            raise NotSupported("not supported")
        return 4

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=self.pid, usedGpuMemory=3 * 2**30), SimpleNamespace(pid=1, usedGpuMemory=2**30)]


def test_every_field_of_the_table_is_read_and_unsupported_ones_are_null() -> None:
    fake = FakeNvml(os.getpid())
    gpus = NvmlGpus(fake)
    first = gpus.sample(123)
    second = gpus.sample(456)
    assert [s["gpu_index"] for s in first] == [0, 1]
    gpu0 = first[0]
    assert gpu0 == {
        "time_us": 123, "gpu_index": 0, "gpu_uuid": "GPU-fake-0", "gpu_model": "NVIDIA H100 80GB HBM3",
        "utilization_pct": 90.0, "memory_used_bytes": 10 * 2**30, "memory_total_bytes": 80 * 2**30,
        "power_w": 612.5, "power_limit_w": 700.0, "temperature_c": 71.0, "sm_clock_mhz": 1980,
        "memory_clock_mhz": 2619, "throttle_reasons": 4, "process_memory_bytes": 3 * 2**30,
    }
    assert {f.name for f in GPU_FIELDS} <= set(gpu0)
    assert first[1]["throttle_reasons"] is None and second[1]["throttle_reasons"] is None
    assert second[1]["utilization_pct"] == 91.0
    assert fake.handle_lookups == 2, "handles are fetched once"
    assert gpus.inventory() == {
        "gpu_driver_version": "560.35.03", "cuda_version": "12.6",
        "gpus": [{"index": i, "uuid": f"GPU-fake-{i}", "model": "NVIDIA H100 80GB HBM3",
                  "memory_total_bytes": 80 * 2**30} for i in (0, 1)],
    }
    gpus.close()
    gpus.close()
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_without_nvml_the_sampler_records_host_metrics_only(tmp_path: Path) -> None:
    class Missing:
        def nvmlInit(self) -> None:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    gpus = NvmlGpus(Missing())
    assert not gpus.available and "libnvidia-ml" in gpus.reason
    assert gpus.sample(1) == [] and gpus.inventory()["gpus"] == []
    # The real pynvml on this GPU-less machine says the same, without raising.
    real = NvmlGpus()
    assert not real.available and real.reason

    settings = ProducerSettings(spool=tmp_path, sample_interval_s=0.05)
    run = Run(project="p", settings=settings, gpus=gpus)
    run.log({"loss": 1.0}, step=0)
    run.finish()
    records = spooled(tmp_path, "gpu_samples")
    assert records, "the sampler took at least its first and last samples"
    assert all(r["samples"] == [] for r in records)
    assert all(r["host_memory_total_bytes"] > 0 and r["process_rss_bytes"] > 0 for r in records)


def test_a_run_records_gpu_inventory_and_samples_into_clickhouse(tmp_path: Path, clickhouse_dsn: str) -> None:
    fake = FakeNvml(os.getpid())
    run = Run(project="p", settings=ProducerSettings(spool=tmp_path, sample_interval_s=0.05), gpus=NvmlGpus(fake))
    run.log({"loss": 1.0}, step=0)
    run.finish()
    assert fake.shutdowns == 1, "finish releases NVML"
    [started] = spooled(tmp_path, "run_started")
    assert started["hardware"]["cuda_version"] == "12.6"
    assert [g["uuid"] for g in started["hardware"]["gpus"]] == ["GPU-fake-0", "GPU-fake-1"]

    sink = ClickHouseSink(clickhouse_dsn)
    ingest_spool(tmp_path, sink)
    rows = sink.client.query(
        f"SELECT gpu_index, count(), any(power_limit_w), any(throttle_reasons) FROM {sink.database}.gpu_samples "
        "FINAL GROUP BY gpu_index ORDER BY gpu_index"
    ).result_rows
    samples = len(spooled(tmp_path, "gpu_samples"))
    assert rows == [(0, samples, 700.0, 4), (1, samples, 700.0, None)]
    host = sink.client.query(f"SELECT count(), min(process_rss_bytes) FROM {sink.database}.host_samples").result_rows
    assert host[0][0] == samples and host[0][1] > 0
    gpu_count = sink.client.query(f"SELECT gpu_count FROM {sink.database}.runs FINAL").result_rows
    assert gpu_count == [(2,)]

