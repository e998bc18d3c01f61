"""Run and event identifiers: run ids sort by creation time (UUIDv7), names are readable."""

from __future__ import annotations

import os
import random
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


def resolve_run_id(resume: str | None, world_size: int | None) -> str:
    """The run id: the one resumed, else RUNSTREAM_RUN_ID, else one shared by all ranks of a job, else new.

    Ranks of one distributed job must log into one run; they derive its id from the launcher's
    job identity (torchrun's TORCHELASTIC_RUN_ID, SLURM's job and step ids) when no id is given.
    """
    explicit = resume or os.environ.get("RUNSTREAM_RUN_ID")
    if explicit:
        try:
            return str(uuid.UUID(explicit))
        except ValueError:
            raise ValueError(f"run id {explicit!r}: expected a UUID such as one printed by runstream") from None
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


def run_name() -> str:
    """A human-readable name such as `misty-otter-42`, for runs started without one."""
    pick = random.SystemRandom()
    return f"{pick.choice(_ADJECTIVES)}-{pick.choice(_NOUNS)}-{pick.randrange(100)}"
