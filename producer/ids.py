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


def event_id() -> str:
    return str(uuid.uuid4())


def run_name() -> str:
    """A human-readable name such as `misty-otter-42`, for runs started without one."""
    pick = random.SystemRandom()
    return f"{pick.choice(_ADJECTIVES)}-{pick.choice(_NOUNS)}-{pick.randrange(100)}"
