"""Logs a test's seeded runs to a spool folder through the real SDK: finished ones in this process,
unfinished ones in a child process that dies without finishing (no exit hooks), as a crashed job would.

Shared by the test modules that compare every answer with what was logged (test_analysis.py,
test_exact_outputs.py), so that both log their workloads the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import runstream

# Values travel as repr() text so that NaN, ±Inf, -0.0 and denormals reach the child bit for bit.
_DIED = """
import os, sys, json, runstream
spec = json.loads(sys.argv[1])
# No heartbeats: the run reads `running` whenever it is read (with them it would be `lost` 3 intervals
# after this process died: runstream.monitoring.run_status; tests/test_heartbeats.py covers that).
os.environ["RUNSTREAM_HEARTBEAT_INTERVAL"] = "0"
run = runstream.init(spec["project"], spec["name"], params=spec["params"], spool=sys.argv[2], sample_interval=0)
for metric, points in spec["metrics"].items():
    for step, value in points:
        run.log({metric: float(value)}, step=step)
run._worker.put(("close", run.run_id))  # seal the spool files as a dying process's worker would have
run.flush()
os._exit(0)  # no finish, no exit hooks: the run never ends
"""


def log_run(spool: Path, project: str, name: str, params: Mapping[str, Any],
            metrics: Mapping[str, Sequence[tuple[int, float]]], status: str | None,
            data_versions: Sequence[Mapping[str, str]] = ()) -> None:
    """Log one run; `status` None: its process dies before finishing (data versions are not logged then)."""
    if status is None:
        payload = json.dumps({"project": project, "name": name, "params": params,
                              "metrics": {m: [[s, repr(v)] for s, v in pts] for m, pts in metrics.items()}})
        subprocess.run([sys.executable, "-c", textwrap.dedent(_DIED), payload, str(spool)], check=True, timeout=120)
        return
    run = runstream.init(project, name, params=dict(params), spool=str(spool), sample_interval=0)
    for version in data_versions:
        run.log_data_version(version["name"], version=version.get("version"), uri=version.get("uri"))
    for metric, points in metrics.items():
        for step, value in points:
            run.log({metric: value}, step=step)
    run.finish(status)
