"""What a run records about where it runs: user, host, code version, command line, frameworks, hardware.

Everything here is best effort: a missing git binary or an unreadable /proc never stops a run.
Framework versions come from installed package metadata, never by importing the framework.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

FRAMEWORKS = ("torch", "jax", "tensorflow", "transformers", "lightning", "pytorch-lightning", "keras", "numpy")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def host_name() -> str:
    return socket.gethostname()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_info() -> dict[str, Any]:
    """Commit, branch, dirty flag and (when dirty) the diff's hash of the repository the job runs in."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "diff_sha256": None}
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    diff_hash = None
    if dirty:
        diff = _git("diff", "HEAD")
        diff_hash = hashlib.sha256(diff.encode()).hexdigest() if diff is not None else None
    return {"commit": commit, "branch": branch, "dirty": dirty, "diff_sha256": diff_hash}


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def distributed() -> dict[str, int | None]:
    """Rank, local rank and world size from torchrun / torch.distributed or SLURM variables."""
    return {
        "rank": _env_int("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"),
        "local_rank": _env_int("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"),
        "world_size": _env_int("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"),
    }


#: Scheduler identifiers worth keeping, by the environment variable that carries them.
SCHEDULER_VARIABLES = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_step_id": "SLURM_STEP_ID",
    "slurm_cluster": "SLURM_CLUSTER_NAME",
    "slurm_restart_count": "SLURM_RESTART_COUNT",
    "torchelastic_run_id": "TORCHELASTIC_RUN_ID",
    "torchelastic_restart_count": "TORCHELASTIC_RESTART_COUNT",
    "k8s_job": "JOB_NAME",
    "k8s_completion_index": "JOB_COMPLETION_INDEX",
    "k8s_pod": "POD_NAME",
    "k8s_namespace": "POD_NAMESPACE",
    "k8s_node": "NODE_NAME",
    "kubernetes_service_host": "KUBERNETES_SERVICE_HOST",
}


def scheduler_ids() -> dict[str, str]:
    """The identifiers present; inside Kubernetes the pod name defaults to the host name."""
    found = {key: os.environ[var] for key, var in SCHEDULER_VARIABLES.items() if os.environ.get(var)}
    if "kubernetes_service_host" in found:
        found.setdefault("k8s_pod", host_name())
        del found["kubernetes_service_host"]
    else:  # JOB_NAME is a common name (CI systems set it): a Kubernetes Job's only inside Kubernetes
        found.pop("k8s_job", None)
        found.pop("k8s_completion_index", None)
    return found


def framework_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in FRAMEWORKS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict[str, Any]:
    """Host hardware; the GPU inventory is filled in by the GPU sampler where NVML is present."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpu_driver_version": None,
        "cuda_version": None,
        "gpus": [],
    }


def command_line() -> list[str]:
    return [sys.executable, *sys.argv]
