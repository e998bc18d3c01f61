"""Everything needed to launch a run again: code version, command line, params as a config file,
data versions and hardware, gathered from what the run recorded at its start and later updates.

The config file nests dotted keys back (`optimizer.name` -> {"optimizer": {"name": ...}}) and keeps
each param's logged type, so it can be fed to the same config loader that produced the params.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from runstream.analysis.queries import param_value, resolve_runs
from runstream.output import dumps_json


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to nested dicts; a key that is both a value and a prefix keeps its dotted form."""
    root: dict[str, Any] = {}
    for key in sorted(flat):
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:  # a.b = 1 and a.b.c = 2: keep the longer key flat
                    node = {}
                    break
                child = node[part] = {}
            node = child
        else:
            node[parts[-1]] = flat[key]
            continue
        root[key] = flat[key]
    return root


def _typed(value_type: str, text: str, number: float | None) -> Any:
    if value_type == "null":
        return None
    if value_type == "bool":
        return text == "true"
    if value_type == "int":
        return int(text)
    if value_type == "float":
        return number
    if value_type == "string" and text.startswith("[") and text.endswith("]"):
        try:  # lists were logged as JSON text
            return json.loads(text)
        except ValueError:
            return text
    return param_value(text, number)


def reproduce(client: Any, db: str, ref: str) -> dict[str, Any]:
    """A JSON-friendly description of the run, with a `launch` shell line that re-runs it."""
    ((run_id, _name),) = resolve_runs(client, db, [ref])
    run_sql = (f"SELECT run_id, project, run_name, user, host, started_at, git_commit, git_branch, git_dirty, "  # noqa: S608
               f"git_diff_sha256, command_line, cpu_model, cpu_count, memory_bytes, gpu_count, framework_versions, "
               f"tags, world_size, scheduler, resumed FROM {db}.runs FINAL WHERE run_id = {{id:String}}")
    names = ("run_id", "project", "name", "user", "host", "started_at", "git_commit", "git_branch", "git_dirty",
             "git_diff_sha256", "command_line", "cpu_model", "cpu_count", "memory_bytes", "gpu_count",
             "framework_versions", "tags", "world_size", "scheduler", "resumed")
    run = dict(zip(names, client.query(run_sql, parameters={"id": run_id}).result_rows[0], strict=True))
    params = {key: _typed(value_type, text, number) for key, value_type, text, number in client.query(
        f"SELECT key, value_type, value_string, value_number FROM {db}.run_params FINAL "  # noqa: S608
        "WHERE run_id = {id:String} ORDER BY key", parameters={"id": run_id}).result_rows}
    data = [{"name": n, "version": v, "uri": u, "digest": d} for n, v, u, d in client.query(
        f"SELECT name, version, uri, digest FROM {db}.run_data_versions FINAL "  # noqa: S608
        "WHERE run_id = {id:String} ORDER BY name", parameters={"id": run_id}).result_rows]
    gpus = [{"model": m, "count": int(c)} for m, c in client.query(
        f"SELECT gpu_model, uniqExact(host, gpu_index) FROM {db}.gpu_samples "  # noqa: S608
        "WHERE run_id = {id:String} GROUP BY gpu_model ORDER BY gpu_model", parameters={"id": run_id}).result_rows]
    finish = client.query(f"SELECT status, exit_code, error FROM {db}.run_finishes FINAL "  # noqa: S608
                          "WHERE run_id = {id:String}", parameters={"id": run_id}).result_rows
    command = list(run["command_line"] or [])
    launch = []
    if run["git_commit"]:
        launch.append(f"git checkout {shlex.quote(run['git_commit'])}")
    if command:
        launch.append(shlex.join(command))
    warnings = []
    if run["git_dirty"]:
        warnings.append("the working tree had uncommitted changes (git_dirty); the commit alone is not the code "
                        f"that ran (diff sha256 {run['git_diff_sha256'] or 'unknown'})")
    if not run["git_commit"]:
        warnings.append("no git commit was recorded (the run did not start inside a git checkout)")
    if not command:
        warnings.append("no command line was recorded")
    return {
        "run_id": run_id,
        "name": run["name"],
        "project": run["project"],
        "status": finish[0][0] if finish else "running",
        "started_at": run["started_at"],
        "user": run["user"],
        "git": {"commit": run["git_commit"], "branch": run["git_branch"], "dirty": run["git_dirty"],
                "diff_sha256": run["git_diff_sha256"]},
        "command_line": command,
        "launch": " && ".join(launch),
        "config": nest(params),
        "data_versions": data,
        "hardware": {"host": run["host"], "cpu_model": run["cpu_model"], "cpu_count": run["cpu_count"],
                     "memory_bytes": run["memory_bytes"], "gpu_count": run["gpu_count"], "gpus": gpus,
                     "world_size": run["world_size"]},
        "framework_versions": dict(run["framework_versions"] or {}),
        "scheduler": dict(run["scheduler"] or {}),
        "tags": dict(run["tags"] or {}),
        "warnings": warnings,
    }


def as_rows(info: dict[str, Any]) -> list[list[Any]]:
    """Field/value rows for the table and CSV formats (nested values as compact JSON)."""
    rows: list[list[Any]] = []
    for key in ("run_id", "name", "project", "status", "started_at", "user"):
        rows.append([key, info[key]])
    for key, value in info["git"].items():
        rows.append([f"git.{key}", value])
    rows.append(["command_line", shlex.join(info["command_line"])])
    rows.append(["launch", info["launch"]])
    rows.append(["config", dumps_json(info["config"], indent=None, sort_keys=True)])
    for version in info["data_versions"]:
        rows.append([f"data.{version['name']}", " ".join(
            f"{k}={v}" for k, v in version.items() if k != "name" and v is not None)])
    for key, value in info["hardware"].items():
        rows.append([f"hardware.{key}", dumps_json(value, indent=None) if isinstance(value, list) else value])
    for key, value in sorted(info["framework_versions"].items()):
        rows.append([f"framework.{key}", value])
    for warning in info["warnings"]:
        rows.append(["warning", warning])
    return rows
