"""Run and event identifiers: run ids sort by creation time (UUIDv7), names are readable."""

from __future__ import annotations

import os
import random
import re
import socket
import time
import uuid

_ADJECTIVES = ("amber", "brisk", "calm", "dusky", "eager", "fuzzy", "gentle", "hazy", "icy", "jolly",
               "keen", "lunar", "misty", "noble", "olive", "proud", "quiet", "rapid", "sunny", "tidy")
_NOUNS = ("falcon", "otter", "cedar", "comet", "delta", "ember", "fjord", "glacier", "heron", "iris",
          "jaguar", "kestrel", "lotus", "meadow", "nebula", "orca", "pine", "quartz", "river", "sparrow")


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, then random bits, so ids sort by time."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


#: Namespace for run ids derived from a launcher's job id, so every rank of one job agrees on it.
_SHARED_RUN_NAMESPACE = uuid.UUID("6f1c9d1e-8a57-4c8e-9b0e-3b7d2f3c1a90")


#: `init(resume="auto")`: the run id comes from the scheduler's identity of the job (see `scheduler_identity`).
AUTO = "auto"

#: A Kubernetes Job pod's name: `<job name>-<5 random characters>` (`<job name>-<index>-<5>` for an Indexed Job).
_POD_SUFFIX = re.compile(r"-[a-z0-9]{5}$")


def _env(name: str) -> str:
    return (os.environ.get(name) or "").strip()


def scheduler_identity() -> str | None:
    """The scheduler's name for this job that stays the same when it is requeued or restarted, or None.

    - SLURM: the cluster and the job id (an array task: the array's job id and the task id), the same
      after `scontrol requeue` or `--requeue` on preemption; one run per job, whatever its steps.
    - torchelastic (torchrun): TORCHELASTIC_RUN_ID (`--rdzv-id`), the same across its worker restarts.
    - Kubernetes: the Job's name (JOB_NAME if set, else the pod's name, POD_NAME or the host name, without
      the random suffix of a Job's pod) and JOB_COMPLETION_INDEX, in POD_NAMESPACE when set: a failed
      pod's replacement has another suffix, and the same Job.
    """
    slurm_job = _env("SLURM_JOB_ID")
    if slurm_job:
        array_job, task = _env("SLURM_ARRAY_JOB_ID"), _env("SLURM_ARRAY_TASK_ID")
        job = f"{array_job}_{task}" if array_job and task else slurm_job
        return f"slurm:{_env('SLURM_CLUSTER_NAME')}:{job}"
    elastic = _env("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":  # torchrun's default rendezvous id names no job
        return f"torchelastic:{elastic}"
    if _env("KUBERNETES_SERVICE_HOST"):
        index = _env("JOB_COMPLETION_INDEX")
        job = _env("JOB_NAME")
        if not job:
            pod = _env("POD_NAME") or socket.gethostname()
            job = _POD_SUFFIX.sub("", pod)
            if job == pod:  # not a Job's pod (a Deployment's, a bare pod): no identity that survives it
                return None
            if index and job.endswith(f"-{index}"):
                job = job[: -len(index) - 1]
        return f"k8s:{_env('POD_NAMESPACE')}:{job}:{index}"
    return None


def auto_run_id() -> str | None:
    """The run id `resume="auto"` continues: a UUIDv5 of the scheduler identity, or None without one."""
    identity = scheduler_identity()
    return str(uuid.uuid5(_SHARED_RUN_NAMESPACE, f"resume:{identity}")) if identity else None


def resolve_run_id(resume: str | None, world_size: int | None) -> str:
    """The run id: the one resumed, else RUNSTREAM_RUN_ID, else one shared by all ranks of a job, else new.

    Ranks of one distributed job must log into one run; they derive its id from the launcher's
    job identity (torchrun's TORCHELASTIC_RUN_ID, SLURM's job and step ids) when no id is given.
    `resume="auto"` takes the id from `auto_run_id()` (the caller deals with there being none).
    """
    if resume == AUTO:
        found = auto_run_id()
        if found:
            return found
        resume = None
    elif resume is not None:
        if not isinstance(resume, str):
            raise TypeError(f"resume: expected a run id (a UUID) or 'auto', got {type(resume).__name__} {resume!r}")
        try:
            return str(uuid.UUID(resume))
        except ValueError:
            raise ValueError(f"resume: run id {resume!r}: expected a UUID such as one printed by runstream, "
                             "or 'auto'") from None
    explicit = os.environ.get("RUNSTREAM_RUN_ID")
    if explicit:
        try:
            return str(uuid.UUID(explicit))
        except ValueError:
            raise ValueError(f"RUNSTREAM_RUN_ID: run id {explicit!r}: expected a UUID such as one printed by "
                             "runstream") from None
    if world_size is not None and world_size > 1:
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        if not job or job == "none":
            slurm = os.environ.get("SLURM_JOB_ID")
            job = f"slurm:{slurm}.{os.environ.get('SLURM_STEP_ID', '')}" if slurm else None
        if job:
            return str(uuid.uuid5(_SHARED_RUN_NAMESPACE, job))
    return uuid7()


def event_id() -> str:
    return str(uuid.uuid4())


def run_name(seed: str | None = None) -> str:
    """A human-readable name such as `misty-otter-42`, for runs started without one; the same for the
    same `seed` (a run id: every attempt of a `resume="auto"` run is named alike)."""
    pick = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311 - a name, not a secret
    return f"{pick.choice(_ADJECTIVES)}-{pick.choice(_NOUNS)}-{pick.randrange(100)}"
