"""runstream: streaming experiment tracking for GPU training fleets.

    import runstream
    run = runstream.init(project="vision", params={"lr": 3e-4})
    run.log({"loss": 0.3, "acc": 0.9}, step=10)
    run.finish()

    runstream.Client(dsn).runs(project="vision")   # analysis, as pandas DataFrames
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runstream.producer import ProducerSettings, Run, init
from runstream.producer.data_versions import hash_path
from runstream.producer.monitor import Monitor, monitor

if TYPE_CHECKING:
    from runstream.analysis.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "Monitor", "ProducerSettings", "Run", "__version__", "hash_path", "init", "monitor"]


def __getattr__(name: str) -> Any:
    # Client pulls in pandas and the ClickHouse driver; a training job that only logs never pays for them.
    if name == "Client":
        from runstream.analysis.client import Client

        return Client
    raise AttributeError(f"module 'runstream' has no attribute {name!r}")
