"""What a run records about where it runs: user, host, code version, command line, frameworks, hardware.

Everything here is best effort: a missing git binary or an unreadable /proc never stops a run.
Framework versions come from installed package metadata, never by importing the framework.
"""

from __future__ import annotations

import getpass
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
    """Commit, branch and dirty flag of the repository the job runs in, or nulls outside one."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None}
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": branch, "dirty": bool(status) if status is not None else None}


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
