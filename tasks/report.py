"""The join: a comparison of every grid cell, written to the artifacts store and published to Prefect.

Every run writes its own ``reports/<UTC time>-<flow run id>/report.md`` and ``summary.json``, which no
other run touches; ``report.md`` and ``summary.json`` at the artifacts root are copies of the latest
finished run's (each written atomically), and ``reports/LATEST`` names its folder.

``report.md`` links its plots and stage folders relative to itself, in a remote store too: such links work
wherever the store's files are read together (a synced copy, a mounted bucket) and never expire. The Prefect
artifacts link a remote store's files by presigned URLs where its filesystem signs them (S3), valid for
``run.link_expiry_seconds``; their text is the store URL (``s3://...``), which says where the file lives.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.cache import StageOutput, fetch_inputs
from tasks.config import DEFAULT_LINK_EXPIRY_SECONDS, check_link_expiry
from tasks.grid import artifact_key
from tasks.render import THUMBNAIL
from tasks.store import artifact_store

COLUMNS = ("cell", "model", "solver", "device", "seed", "sensitivity", "test_accuracy", "train_accuracy", "test_loss",
           "nfe_forward", "nfe_backward", "train_seconds", "queue_seconds", "cached")
# The tables people read (the report, the UI's table and markdown artifacts) are narrower: the cell names the
# model, solver and device (and the seed, where the grid sweeps seeds), and the UI cut off the columns of a wider table.
MARKDOWN_COLUMNS = {"cell": "cell", "test_accuracy": "test acc", "train_accuracy": "train acc",
                    "test_loss": "test loss", "nfe_forward": "NFE fwd", "nfe_backward": "NFE bwd",
                    "train_seconds": "train s", "queue_seconds": "queued s", "cached": "cached"}
# How each numeric column is shown (the table artifact, the markdown table, the console): digits after the point.
DECIMALS = {"test_accuracy": 4, "train_accuracy": 4, "test_loss": 4, "train_seconds": 1, "queue_seconds": 1}
CHANCE_MARGIN = 0.05  # a test accuracy within this of 1/classes (or below) is reported as chance level
INLINE_BUDGET_BYTES = 900_000  # keep the markdown artifact under Prefect's ~1 MB comfort zone


def cell_names(cells: list[dict[str, StageOutput]], names: Sequence[str] | None = None) -> list[str]:
    """The cells' names: ``names`` (the grid's, which show the seed where it sweeps seeds), else the ones their
    trainings recorded (model, solver and device only: one training serves grids with and without a seed axis)."""
    return list(names) if names is not None else [cell["metrics"].data["cell"] for cell in cells]


def comparison_rows(cells: list[dict[str, StageOutput]], *, names: Sequence[str] | None = None,
                    seeds: Sequence[int | None] | None = None) -> list[dict[str, Any]]:
    """One row per cell with the columns of :data:`COLUMNS` (full precision: ``summary.json`` keeps these).

    ``names`` and ``seeds`` are the grid's cell names and init seeds, in the order of ``cells`` (see
    :func:`cell_names`); without ``seeds`` the seed column is None.
    """
    rows = []
    for cell, cell_name, seed in zip(cells, cell_names(cells, names), seeds or [None] * len(cells)):
        metrics = cell["metrics"].data
        reused = [name for name, output in cell.items() if output.reused]
        row = {c: metrics.get(c) for c in COLUMNS} | {"cell": cell_name, "seed": seed}
        # "all", "none", or the cell's stages this run took from the cache (the rest it computed)
        row["cached"] = "all" if len(reused) == len(cell) else ", ".join(reused) or "none"
        rows.append(row)
    return rows


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its floats rounded for display (:data:`DECIMALS`, else 4 significant digits)."""
    def show(column: str, value: Any) -> Any:
        if not isinstance(value, float):
            return value
        return round(value, DECIMALS[column]) if column in DECIMALS else float(f"{value:.4g}")

    return {column: show(column, value) for column, value in row.items()}


def chance_warnings(cells: list[dict[str, StageOutput]], names: Sequence[str] | None = None) -> list[str]:
    """One sentence per cell whose test accuracy is at or below chance (1 / number of classes)."""
    warnings = []
    for cell, name in zip(cells, cell_names(cells, names)):
        metrics = cell["metrics"].data
        classes, accuracy = metrics.get("classes"), metrics.get("test_accuracy")
        if classes and accuracy is not None and accuracy <= 1 / classes + CHANCE_MARGIN:
            warnings.append(f"{name}: test accuracy {accuracy:.4f} is at or below chance "
                            f"({1 / classes:.2f} for {classes} classes): it did not learn; try more epochs "
                            "or a higher learning rate")
    return warnings


def stage_index(cells: list[dict[str, StageOutput]], names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Which folder holds each cell's output of each stage: the hash-named folders, by cell name."""
    return [{"cell": name, "stage": output.stage, "folder": f"{output.stage}/{output.key}"}
            for cell, name in zip(cells, cell_names(cells, names)) for output in cell.values()]


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the UI's table shows them: :data:`MARKDOWN_COLUMNS`, short headers, rounded."""
    return [{header: rounded(row)[column] for column, header in MARKDOWN_COLUMNS.items()} for row in rows]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table of :data:`MARKDOWN_COLUMNS`, rounded for reading."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS.values()) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    lines += ["| " + " | ".join(str(rounded(row)[c]) for c in MARKDOWN_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _index_markdown(cells: list[dict[str, StageOutput]], names: Sequence[str], link_prefix: str, *, links: bool
                    ) -> list[str]:
    """The cell -> stage folder table: links relative to the report file (``links``), else the folders' paths
    as text (the UI's copy, where a relative link would lead nowhere)."""
    by_cell: dict[str, list[str]] = {}
    for entry in stage_index(cells, names):
        by_cell.setdefault(entry["cell"], []).append(
            f"[{entry['stage']}]({link_prefix}{entry['folder']}/)" if links else f"`{entry['folder']}`")
    where = [] if links else ["Folders under the artifacts store, each with its signed `manifest.json`.", ""]
    return ["## Where each cell's files are", "", *where, "| cell | stage folders |", "|---|---|",
            *(f"| {cell} | {' · '.join(entries)} |" for cell, entries in by_cell.items()), ""]


def render_report(rows: list[dict[str, Any]], cells: list[dict[str, StageOutput]], root: Path, *,
                  inline: bool, link_prefix: str = "") -> str:
    """The report as markdown; plots inline as data URIs (``inline``) or as links to ``link_prefix`` + their
    path under ``root`` (``"../../"`` for a report two folders below the root)."""
    names = [row["cell"] for row in rows]
    parts = ["# nodecore training grid", "", markdown_table(rows), ""]
    parts += [f"> **Warning** {warning}" for warning in chance_warnings(cells, names)]
    parts += ["", *_index_markdown(cells, names, link_prefix, links=not inline)]
    budget = INLINE_BUDGET_BYTES
    for row, cell in zip(rows, cells):
        parts += [f"## {row['cell']}", ""]
        for name in cell["plots"].data["plots"]:
            path = cell["plots"].path(root, name)
            if inline:  # the render stage's thumbnail: read, not made, so a cached cell costs a file read
                thumbnail = cell["plots"].path(root, THUMBNAIL.format(plot=name))
                if 4 * ((thumbnail.stat().st_size + 2) // 3) > budget:  # its base64 length
                    parts.append(f"*{name}: omitted to keep the artifact small; see {path}*")
                    continue
                encoded = base64.b64encode(thumbnail.read_bytes()).decode()
                budget -= len(encoded)
                parts.append(f"![{name}](data:image/jpeg;base64,{encoded})")
            else:
                parts.append(f"![{name}]({link_prefix}{cell['plots'].files[name]})")
        parts.append("")
    return "\n".join(parts)


def run_folder_name(flow_run_id: str | None, *, now: float | None = None) -> str:
    """``20261201T083000Z-<first 8 of the flow run id>``: sorts by time, unique per run."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{(flow_run_id or 'local')[:8]}"


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def publish_report(root: str, cells: list[dict[str, StageOutput]], *,
                   link_expiry_seconds: int = DEFAULT_LINK_EXPIRY_SECONDS, names: list[str] | None = None,
                   seeds: list[int] | None = None) -> dict[str, Any]:
    """Write this run's report and summary (and the latest copies at ``root``); create the Prefect artifacts.

    ``names`` and ``seeds`` are the grid's cell names and each cell's init seed, in the order of ``cells``: the
    rows' ``cell`` and ``seed`` columns (see :func:`comparison_rows`).

    ``root`` is the artifacts store (a folder or URL); the returned locations are its URLs (local paths for a
    folder). The artifacts' links are what a browser opens (:meth:`ArtifactStore.browser_url`): presigned URLs
    valid for ``link_expiry_seconds`` where the store signs them, shown as the store URL; else the store URL.

    Returns:
        The rows, this run's ``report`` and ``summary`` locations, and the ``latest_report`` copy at the root.

    Raises:
        ValueError: ``link_expiry_seconds`` is outside 1 to 604800 (before anything is written).
    """
    expires_in = check_link_expiry(link_expiry_seconds)
    store = artifact_store(root)
    fetch_inputs(store, {"plots": [cell["plots"] for cell in cells]})  # read for the inline thumbnails
    rows = comparison_rows(cells, names=names, seeds=seeds)
    names = [row["cell"] for row in rows]
    run_folder = f"reports/{run_folder_name(runtime.flow_run.id)}"
    warnings = chance_warnings(cells, names)
    summary = json.dumps({"rows": rows, "flow_run_id": runtime.flow_run.id, "warnings": warnings,
                          "index": stage_index(cells, names),
                          "cells": [{k: v.model_dump() for k, v in c.items()} for c in cells]}, indent=2)
    written = {
        f"{run_folder}/report.md": render_report(rows, cells, store.local_root, inline=False, link_prefix="../../"),
        f"{run_folder}/summary.json": summary,
        "report.md": render_report(rows, cells, store.local_root, inline=False),
        "summary.json": summary,
        "reports/LATEST": run_folder.rsplit("/", 1)[1] + "\n",
    }
    for relative, text in written.items():
        store.write_bytes(relative, text.encode())

    def shown(relative: str) -> str:  # what the console prints: a local path, or the store's URL
        return str(store.local_root / relative) if store.is_local else store.url(relative)

    # Said beside a presigned link, so that a dead link explains itself (the links are signed just after this).
    valid_until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + expires_in))

    def link(relative: str) -> tuple[str, str, str]:
        """(what a browser opens, the store URL, "" or a note that the link is presigned and until when)."""
        opened, url = store.browser_url(relative, expires_in), store.url(relative)
        return opened, url, "" if opened == url else f"; presigned, valid until {valid_until}"

    create_table_artifact(key="nodecore-grid", table=display_rows(rows),
                          description="one row per (model, solver, device, seed) cell; every column in summary.json")
    create_markdown_artifact(key="nodecore-report",
                             markdown=render_report(rows, cells, store.local_root, inline=True),
                             description="comparison report with plots")
    opened, _, note = link(f"{run_folder}/report.md")
    create_link_artifact(key="nodecore-report-file", link=opened, link_text=shown(f"{run_folder}/report.md"),
                         description=f"this run's report.md{note}")
    checkpoints = {row["cell"]: link(cell["trained"].files["checkpoint"]) for row, cell in zip(rows, cells)}
    note = next((note for _, _, note in checkpoints.values() if note), "")
    create_markdown_artifact(key="nodecore-checkpoints", description=f"the trained weights of every cell{note}",
                             markdown="\n".join(["| cell | checkpoint |", "|---|---|", *(
                                 f"| {c} | [{url}]({opened}) |" for c, (opened, url, _) in checkpoints.items())]))
    # A link per checkpoint this run trained (its key's history is the cell's checkpoints, run by run). The server
    # takes ~35 ms per artifact, so a cell taken whole from the cache adds none: its checkpoint did not change.
    # A presigned link's text is the store URL, which says where the checkpoint lives.
    for row, cell in zip(rows, cells):
        if not cell["trained"].reused:
            opened, url, note = checkpoints[row["cell"]]
            create_link_artifact(key=artifact_key("nodecore-checkpoint", row["cell"]), link=opened,
                                 link_text=url if note else f"checkpoint {row['cell']}",
                                 description=f"trained weights of {row['cell']}{note}")
    return {"rows": rows, "report": shown(f"{run_folder}/report.md"), "summary": shown(f"{run_folder}/summary.json"),
            "latest_report": shown("report.md"), "warnings": warnings}
