"""Samples a real GPU through runstream's sampler and prints what it read: the check that needs a GPU.

Run on a machine with an NVIDIA GPU (it is how the sampler was checked on a lent H100/H200):

    python bench/gpu_sampler_check.py --seconds 6 [--out samples.json]

It loads the GPU with matrix products when PyTorch is installed (so utilisation, power and clocks
move), reads inventory and samples straight from `NvmlGpus`, then runs a real `Run` with the
background sampler writing to a spool folder and reads the spooled `gpu_samples` back with fastavro.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import fastavro

from runstream.producer.gpu import NvmlGpus
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings


def gpu_load(stop: threading.Event) -> str:
    """Matrix products on GPU 0 until stopped, when PyTorch with CUDA is present."""
    try:
        import torch
    except ImportError:
        return "no PyTorch: GPU left idle"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device: GPU left idle"

    def work() -> None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        while not stop.is_set():
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()

    threading.Thread(target=work, daemon=True).start()
    return f"loading GPU 0 with bf16 8192^3 matrix products (torch {torch.__version__})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to sample (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write everything read as JSON here")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        report["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except FileNotFoundError:
        report["nvidia_smi"] = "nvidia-smi not found"
    print("nvidia-smi -L:", report["nvidia_smi"])

    stop = threading.Event()
    report["load"] = gpu_load(stop)
    print(report["load"])
    try:
        gpus = NvmlGpus()
        print("NVML available:", gpus.available, gpus.reason)
        report["inventory"] = gpus.inventory()
        print("inventory:", json.dumps(report["inventory"], indent=1))
        direct = []
        for _ in range(3):
            time.sleep(1.0)
            direct.extend(gpus.sample(time.time_ns() // 1000))
        report["direct_samples"] = direct
        gpus.close()
        for sample in direct:
            print("sample:", json.dumps(sample))

        spool = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        run = Run(project="gpu-check", name="h-series", settings=ProducerSettings(spool=spool, sample_interval_s=1.0))
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < args.seconds:
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
            time.sleep(0.01)
        run.finish()
    finally:
        stop.set()
    events: list[dict[str, Any]] = []
    for path in sorted(spool.rglob("gpu_samples.*.avro")):
        with open(path, "rb") as handle:
            events.extend(fastavro.reader(handle))  # type: ignore[arg-type]
    report["run_events"] = events
    print(f"run sampler wrote {len(events)} gpu_samples events over {args.seconds:.0f}s:")
    for event in events:
        host = {k: event[k] for k in ("host_cpu_pct", "host_memory_used_bytes", "process_rss_bytes")}
        for sample in event["samples"]:
            keep = ("gpu_index", "gpu_model", "utilization_pct", "memory_used_bytes", "power_w", "power_limit_w",
                    "temperature_c", "sm_clock_mhz", "memory_clock_mhz", "throttle_reasons", "process_memory_bytes")
            print("  ", json.dumps({k: sample[k] for k in keep}), json.dumps(host))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0 if events and any(e["samples"] for e in events) else 1


if __name__ == "__main__":
    raise SystemExit(main())
