"""The producer SDK: what a training job imports to record a run."""

from runstream.producer.run import Run, init
from runstream.producer.settings import ProducerSettings

__all__ = ["ProducerSettings", "Run", "init"]
