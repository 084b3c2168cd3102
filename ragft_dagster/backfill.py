"""Asset backfills of the document assets, as the UI's Materialize -> Launch backfill submits
them: the daemon's backfill loop launches the runs, ``docs.batch_size`` documents each (the
assets' ``BackfillPolicy.multi_run``).

The request is Dagster's public GraphQL mutation ``launchPartitionBackfill``, the one the UI
sends. ``ragft backfill`` executes it with the ``dagster-graphql`` command (part of
dagster-webserver), which loads the project's code location and the instance at
``DAGSTER_HOME`` and needs no running webserver. Dagster 1.13 has no Python API that submits
an asset backfill, and its backfill record is private.

``dagster job backfill -j documents_job`` is a job backfill instead: Dagster launches one run
per partition whatever the assets' backfill policy, which at a thousand documents spends most
of its time starting runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

DOCUMENT_ASSETS = ("doc_chunks", "synthetic_qa")
CODE_LOCATION_MODULE = "ragft_dagster.definitions"
SUBMIT_TIMEOUT_S = 300

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { partitionKeys }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""

GraphQL = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]
"""Executes a GraphQL document with its variables; returns the response's JSON object."""


class BackfillError(Exception):
    """The backfill was not submitted; the message says why."""


def backfill_variables(
    assets: Sequence[str] = DOCUMENT_ASSETS,
    partitions: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The ``launchPartitionBackfill`` variables of an asset backfill of ``assets`` over
    ``partitions`` (None: every partition)."""
    params: dict[str, Any] = {"assetSelection": [{"path": [asset]} for asset in assets]}
    if partitions is None:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = list(partitions)
    if title:
        params["title"] = title
    return {"params": params}


def launch_backfill(
    execute: GraphQL,
    assets: Sequence[str] = DOCUMENT_ASSETS,
    partitions: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Submit an asset backfill through ``execute`` (Dagster's GraphQL schema, in process, from
    the command line or on a webserver); returns its id.

    Raises:
        BackfillError: The schema refused the request (unknown partitions, a Python error).
    """
    response = execute(LAUNCH_BACKFILL, backfill_variables(assets, partitions, title))
    if response.get("errors"):
        messages = "; ".join(str(e.get("message", e)) for e in response["errors"])
        raise BackfillError(f"Dagster refused the backfill request: {messages}")
    result = (response.get("data") or {}).get("launchPartitionBackfill") or {}
    kind = result.get("__typename")
    if kind == "LaunchBackfillSuccess":
        return str(result["backfillId"])
    if kind == "PartitionKeysNotFoundError":
        raise BackfillError(f"no document partitions {sorted(result['partitionKeys'])}")
    raise BackfillError(f"Dagster refused the backfill ({kind}): {result.get('message', result)}")


def graphql_command(recipe: Path, profile: Path, timeout_s: float = SUBMIT_TIMEOUT_S) -> GraphQL:
    """A :data:`GraphQL` executor that runs ``dagster-graphql`` on the project's code location
    (built from ``recipe`` and ``profile``) against the instance at ``DAGSTER_HOME``."""
    exe = Path(sys.executable).with_name("dagster-graphql")
    program = str(exe) if exe.exists() else shutil.which("dagster-graphql")
    if program is None:
        raise BackfillError(
            "the dagster-graphql command is missing; it comes with dagster-webserver "
            "(`make install` installs it)"
        )
    env = {
        **os.environ,
        "RAGFT_RECIPE": str(Path(recipe).resolve()),
        "RAGFT_PROFILE": str(Path(profile).resolve()),
    }

    def execute(document: str, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        with tempfile.TemporaryDirectory(prefix="ragft-backfill-") as tmp:
            out = Path(tmp) / "response.json"
            cmd = [program, "-m", CODE_LOCATION_MODULE, "-t", document]
            cmd += ["-v", json.dumps(variables), "-o", str(out)]
            try:
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout_s
                )
            except subprocess.TimeoutExpired as exc:
                raise BackfillError(
                    f"dagster-graphql gave no answer in {timeout_s:.0f} s; was the backfill "
                    "submitted? Check Runs -> Backfills in the UI before submitting again"
                ) from exc
            if not out.exists() or not out.read_text().strip():
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise BackfillError(
                    f"dagster-graphql ended with status {done.returncode} and no answer:\n{tail}"
                )
            return json.loads(out.read_text())

    return execute


def submit_asset_backfill(
    recipe: Path,
    profile: Path,
    assets: Sequence[str] = DOCUMENT_ASSETS,
    partitions: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Record an asset backfill for the daemon of the instance at ``DAGSTER_HOME`` (the request
    the UI's Launch backfill makes); returns its id.

    Args:
        recipe: The recipe file the code location is built from.
        profile: The profile file.
        assets: The assets to materialize.
        partitions: Their partition keys; None for every partition.
        title: Shown in the UI's backfill list.
    """
    return launch_backfill(graphql_command(recipe, profile), assets, partitions, title)
