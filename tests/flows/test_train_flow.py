"""End-to-end tests of the training flow against the session's real Prefect server.

One tiny two-cell run (``baseline``) is made per module; tests that need a warm cache copy its artifacts
folder (stage files and their manifests, which are also Prefect's cache records) so each test owns its folder.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import matplotlib.image
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import StateType

import nodecore
import tasks.cache
import tasks.faults
from flows.cli import HINT, parse_config
from tasks.config import PipelineConfig
from flows.server import ServerInfo, prefect_settings_context
from nodecore.checkpoints import load_checkpoint
from nodecore.dataset_io import read_dataset
from nodecore.datasets import DATASET_TYPES
from nodecore.solvers import SOLVER_NAMES
from nodecore.trajectory_io import read_trajectory
from tasks.cache import MANIFEST, StageOutput, read_manifest
from tasks.code_version import NODECORE_DIR, nodecore_dependencies
from tests.flows._pipeline import (
    CELL_TASKS,
    SOLVERS,
    STAGE_TASKS,
    cells,
    expected_task_labels,
    flow_run_id_from_output,
    read_flow_run,
    run_cli,
    run_flow,
    stage_folders,
    state_history,
    state_names,
    task_runs,
    tiny_argv,
    tiny_config,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGE_DIRS = ("generate-dataset", "build-vector-field", "train", "evaluate", "integrate-trajectories", "render")


@dataclass(frozen=True)
class Run:
    root: Path
    config: PipelineConfig
    state: Any
    flow_run_id: UUID


@pytest.fixture(scope="module")
def baseline(prefect_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("baseline") / "artifacts"
    config = tiny_config(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(tasks.faults.ENV, raising=False)
        state = run_flow(prefect_server, config)
    assert state.is_completed(), state.message
    return Run(root, config, state, state.state_details.flow_run_id)


@pytest.fixture
def warm(baseline: Run, tmp_path: Path) -> Path:
    """A private copy of the baseline's artifacts folder: every stage of the baseline grid is cached there."""
    root = tmp_path / "artifacts"
    shutil.copytree(baseline.root, root)
    return root


@pytest.fixture(autouse=True)
def no_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No injected faults unless a test sets them, and fresh attempt counters (they are per process)."""
    monkeypatch.delenv(tasks.faults.ENV, raising=False)
    monkeypatch.setattr(tasks.faults, "_attempts", type(tasks.faults._attempts)())


def _completed(info: ServerInfo, config: PipelineConfig, *, count: int) -> dict[str, Any]:
    """Run the flow in-process, check it completed, and return its settled task runs by label."""
    state = run_flow(info, config)
    assert state.is_completed(), state.message
    return task_runs(info, state.state_details.flow_run_id, count=count)


def _summary_cells(root: Path) -> dict[str, dict[str, StageOutput]]:
    summary = json.loads((root / "summary.json").read_text())
    by_cell = {}
    for row, outputs in zip(summary["rows"], summary["cells"]):
        by_cell[row["cell"]] = {name: StageOutput.model_validate(output) for name, output in outputs.items()}
    return by_cell


def _expected_counts(solvers: list[str]) -> int:
    """Task runs of a completed flow run: generate and field, four per cell, the report."""
    return len(STAGE_TASKS) + len(CELL_TASKS) * len(solvers) + 1


def _cell_tasks(*cell_names: str) -> set[str]:
    """The task labels of these cells' stages: what a rerun submits for a cell it cannot take whole from the cache."""
    return {f"{stage}-{cell}" for cell in cell_names for stage in CELL_TASKS}


# --- one run, end to end ---------------------------------------------------------------------------------


def test_run_completes_and_returns_one_row_per_cell(baseline: Run) -> None:
    summary = baseline.state.result()
    assert [row["cell"] for row in summary["rows"]] == cells()
    assert {row["cached"] for row in summary["rows"]} == {"none"}  # a cold run computed every stage
    run_folder = baseline.root.resolve() / "reports" / (baseline.root / "reports" / "LATEST").read_text().strip()
    assert run_folder.name.endswith(str(baseline.flow_run_id)[:8])
    assert Path(summary["report"]) == run_folder / "report.md"
    assert Path(summary["summary"]) == run_folder / "summary.json"
    assert Path(summary["latest_report"]) == baseline.root.resolve() / "report.md"


def test_every_stage_folder_has_a_verified_manifest(baseline: Run) -> None:
    expected_keys = {"generate-dataset": 1, "build-vector-field": 1, "train": 2, "evaluate": 2,
                     "integrate-trajectories": 2, "render": 2}
    for stage, count in expected_keys.items():
        keys = stage_folders(baseline.root, stage)
        assert len(keys) == count, (stage, keys)
        for key in keys:
            output = read_manifest(baseline.root / stage / key, baseline.root)
            assert output is not None and output.stage == stage and output.key == key
            assert output.files and set(output.files) == set(output.digests)
    # Prefect's cache records are these manifests: nothing else (no pickled record) is kept in the store.
    assert not (baseline.root / ".prefect-results").exists()


def test_dataset_parquet_reads_back_with_its_schema(baseline: Run) -> None:
    (key,) = stage_folders(baseline.root, "generate-dataset")
    dataset = read_manifest(baseline.root / "generate-dataset" / key, baseline.root)
    for split, n, seed in (("train", 64, 0), ("test", 64, 1)):
        X, y, meta = read_dataset(dataset.path(baseline.root, split))
        assert X.dtype == torch.float32 and X.shape == (n, 2)
        assert y.dtype == torch.int64 and y.shape == (n,) and set(y.tolist()) == {0, 1}
        assert meta["split"] == split and meta["seed"] == seed and meta["dataset_type"] == "moons"
        assert meta["n_samples"] == n and meta["dim"] == 2


def test_cell_artifacts_read_back(baseline: Run) -> None:
    by_cell = _summary_cells(baseline.root)
    assert list(by_cell) == cells()
    for cell, outputs in by_cell.items():
        solver = cell.split("@")[0]
        # trajectories: the first 32 test points over 5 depths
        t_eval, trajectory, labels, meta = read_trajectory(outputs["trajectories"].path(baseline.root, "trajectories"))
        assert t_eval.shape == (5,) and trajectory.shape == (5, 32, 2) and labels.shape == (32,)
        assert torch.isfinite(trajectory).all() and meta["solver"] == solver and meta["device"] == "cpu"
        # the trained weights: a self-describing checkpoint that torch.load(weights_only=True) reads
        checkpoint_path = outputs["trained"].path(baseline.root, "checkpoint")
        raw = torch.load(checkpoint_path, weights_only=True)
        assert isinstance(raw, dict)
        checkpoint = load_checkpoint(checkpoint_path)
        assert checkpoint.epoch == 4 and checkpoint.nodecore_version == nodecore.__version__
        assert checkpoint.state_dict and all(t.device.type == "cpu" for t in checkpoint.state_dict.values())
        assert checkpoint.config["device"] == "cpu" and checkpoint.config["ode"]["solver"] == solver
        assert not list(checkpoint_path.parent.parent.glob("**/resume*"))  # the resume checkpoints are cleaned up
        history = json.loads(outputs["trained"].path(baseline.root, "history").read_text())
        assert history == checkpoint.history
        # plots: four decodable PNGs, each with its JPEG thumbnail (what the report inlines)
        plots = {"depth", "state_space", "vector_field", "decision_boundary"}
        assert set(outputs["plots"].data["plots"]) == plots
        assert set(outputs["plots"].files) == plots | {f"{name}-thumbnail" for name in plots}
        for name in plots:
            path = outputs["plots"].path(baseline.root, name)
            assert path.read_bytes()[:8] == PNG_SIGNATURE, path
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
            thumbnail = matplotlib.image.imread(outputs["plots"].path(baseline.root, f"{name}-thumbnail"), format="jpeg")
            assert thumbnail.ndim == 3 and max(thumbnail.shape[:2]) <= 560
        # metrics: sane numbers
        metrics = json.loads(outputs["metrics"].path(baseline.root, "metrics").read_text())
        assert metrics == outputs["metrics"].data
        assert metrics["solver"] == solver and metrics["device"] == "cpu"
        for key in ("train_accuracy", "test_accuracy"):
            assert 0.0 <= metrics[key] <= 1.0
        for key in ("train_loss", "test_loss"):
            assert math.isfinite(metrics[key]) and metrics[key] >= 0
        assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0 and metrics["nfe_forward_eval"] > 0
        assert metrics["train_seconds"] > 0


def test_shared_field_checkpoint_reads_back(baseline: Run) -> None:
    (key,) = stage_folders(baseline.root, "build-vector-field")
    path = read_manifest(baseline.root / "build-vector-field" / key, baseline.root).path(baseline.root, "field")
    assert isinstance(torch.load(path, weights_only=True), dict)
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["field"]["dim"] == 2 and checkpoint.state_dict


def test_report_and_summary_are_written(baseline: Run) -> None:
    result = baseline.state.result()
    for report_path in (baseline.root / "report.md", Path(result["report"])):  # the latest copy, the run's own
        report = report_path.read_text()
        assert report.startswith("# nodecore training grid")
        for cell in cells():
            assert f"| {cell} |" in report and f"## {cell}" in report
        linked = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
        assert len(linked) == 4 * len(SOLVERS)
        assert all((report_path.parent / relative).is_file() for relative in linked)  # links work from there
    for summary_path in (baseline.root / "summary.json", Path(result["summary"])):
        summary = json.loads(summary_path.read_text())
        assert summary["rows"] == result["rows"] and summary["flow_run_id"] == str(baseline.flow_run_id)
    # The tiny 4-epoch run does not learn: every cell at or below chance is named in the summary and report.
    poor = [row["cell"] for row in result["rows"] if row["test_accuracy"] <= 0.55]
    assert poor and [w.split(":")[0] for w in result["warnings"]] == poor
    assert all(f"**Warning** {w}" in (baseline.root / "report.md").read_text() for w in result["warnings"])


def test_every_task_run_is_recorded_completed(prefect_server: ServerInfo, baseline: Run) -> None:
    runs = task_runs(prefect_server, baseline.flow_run_id, count=_expected_counts(SOLVERS))
    assert set(runs) == expected_task_labels()
    assert state_names(runs) == {name: "Completed" for name in runs}
    assert all(run.state_type is StateType.COMPLETED and run.run_count == 1 for run in runs.values())
    assert read_flow_run(prefect_server, baseline.flow_run_id).state_type is StateType.COMPLETED


def test_flow_run_artifacts_are_published(prefect_server: ServerInfo, baseline: Run) -> None:
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[baseline.flow_run_id])))
    by_key = {a.key: a for a in artifacts if a.key}
    assert by_key["nodecore-grid"].type == "table"
    table = by_key["nodecore-grid"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["cell"] for row in rows] == cells()
    assert by_key["nodecore-report"].type == "markdown"
    assert by_key["nodecore-report"].data.count("](data:image/") == 4 * len(SOLVERS)  # plots inline
    # Prefect stores link artifacts as markdown ``[text](link)``.
    report = Path(baseline.state.result()["report"])
    assert f"]({report.as_uri()})" in by_key["nodecore-report-file"].data
    links = [by_key[f"nodecore-checkpoint-{solver}-cpu"] for solver in SOLVERS]  # every artifact has a key
    assert all(a.type == "markdown" and "checkpoint.pt)" in a.data for a in links)
    listed = by_key["nodecore-checkpoints"].data  # and one table of every cell's checkpoint
    assert all(f"| {cell} | [file://" in listed for cell in cells()) and listed.count("checkpoint.pt)") == len(SOLVERS)
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == len(SOLVERS) and all(a.data == 100.0 for a in progress)


# --- caching -------------------------------------------------------------------------------------------


def test_identical_run_in_a_new_process_is_all_cached(prefect_server: ServerInfo, baseline: Run) -> None:
    argv = tiny_argv(baseline.root)
    assert parse_config(PipelineConfig, argv) == baseline.config
    began = time.monotonic()
    process = run_cli(argv)
    assert process.returncode == 0, process.stderr[-4000:]
    assert "reusing local Prefect server" in process.stdout  # not a server of its own
    flow_run_id = flow_run_id_from_output(process.stdout)
    assert flow_run_id != baseline.flow_run_id
    # Every cell is cached in full: read from its verified manifests, no stage is even submitted.
    runs = task_runs(prefect_server, flow_run_id, count=1)
    assert state_names(runs) == {"report": "Completed"}
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}
    # the run's report and checkpoint table; no new version of a checkpoint link, since no checkpoint changed
    assert {"nodecore-grid", "nodecore-report", "nodecore-checkpoints"} <= keys
    assert not any(key.startswith("nodecore-checkpoint-") for key in keys), keys
    assert f"{len(cells())} of {len(cells())} cells are cached in full" in process.stdout + process.stderr
    table = {line.split()[0]: line for line in process.stdout.splitlines() if "@" in line.split(" ")[0]}
    assert set(table) == set(cells())  # the summary table: every cell, its training shown as cached
    assert all(line.split()[4:] == ["cached", "all"] for line in table.values()), table
    summary = json.loads((baseline.root / "summary.json").read_text())
    assert summary["flow_run_id"] == str(flow_run_id) and {row["cached"] for row in summary["rows"]} == {"all"}
    assert time.monotonic() - began < 60


def test_augmented_and_equilibrium_cells_rerun_without_task_runs(prefect_server: ServerInfo, tmp_path: Path) -> None:
    """The cache check before submitting knows each model's stages: a ``deq`` cell has no trajectories."""
    config = tiny_config(tmp_path / "artifacts", "--models", "anode", "deq", solvers=["euler"])
    labels = {"generate-dataset", "build-anode", "build-deq", "report",
              *_cell_tasks("anode-euler@cpu"), "train-deq-anderson@cpu", "evaluate-deq-anderson@cpu",
              "render-deq-anderson@cpu"}
    first = _completed(prefect_server, config, count=len(labels))
    assert set(first) == labels and set(state_names(first).values()) == {"Completed"}
    state = run_flow(prefect_server, config)
    assert state.is_completed(), state.message
    assert set(task_runs(prefect_server, state.state_details.flow_run_id, count=1)) == {"report"}
    assert [(row["cell"], row["cached"]) for row in state.result()["rows"]] == [
        ("anode-euler@cpu", "all"), ("deq-anderson@cpu", "all")]


def test_a_seed_axis_reuses_the_default_cells_and_adds_a_field_and_cells_per_new_seed(
        prefect_server: ServerInfo, warm: Path) -> None:
    """``--seeds 0 1`` over the baseline's store: seed 0 is the config's init seed, so its cells are the baseline's,
    taken whole from the cache under seeded names; seed 1 gets a field of its own and its cells; rerun: all cached."""
    assert [row["seed"] for row in json.loads((warm / "summary.json").read_text())["rows"]] == [0, 0]
    config = tiny_config(warm, "--seeds", "0", "1")
    added = {"build-node#s1", "report", *_cell_tasks(*(f"{solver}@cpu#s1" for solver in SOLVERS))}
    runs = _completed(prefect_server, config, count=len(added))
    assert state_names(runs) == {name: "Completed" for name in added}
    summary = json.loads((warm / "summary.json").read_text())
    expected = [(f"{solver}@cpu#s{seed}", seed) for solver in SOLVERS for seed in (0, 1)]
    assert [(row["cell"], row["seed"], row["cached"]) for row in summary["rows"]] == [
        (cell, seed, "all" if seed == 0 else "none") for cell, seed in expected]
    assert [entry["cell"] for entry in summary["index"]][::len(CELL_TASKS)] == [cell for cell, _ in expected]
    assert all(f"## {cell}\n" in (warm / "report.md").read_text() for cell, _ in expected)
    assert len(stage_folders(warm, "build-vector-field")) == 2 and len(stage_folders(warm, "train")) == 4
    trained = {row["cell"]: outputs["trained"]["key"] for row, outputs in zip(summary["rows"], summary["cells"])}
    assert len(set(trained.values())) == 4  # a training per solver and seed
    # the new trainings were told their seeded names (logs, progress artifacts, plot titles); seed 0's are the
    # baseline's cached ones, trained before under the unseeded name
    assert [outputs["trained"]["data"]["cell"] for outputs in summary["cells"]] == [
        cell if seed == 1 else cell.removesuffix("#s0") for cell, seed in expected]

    state = run_flow(prefect_server, config)
    assert state.is_completed(), state.message
    assert set(task_runs(prefect_server, state.state_details.flow_run_id, count=1)) == {"report"}
    assert [(row["cell"], row["seed"], row["cached"]) for row in state.result()["rows"]] == [
        (cell, seed, "all") for cell, seed in expected]


def test_concurrent_runs_on_one_folder_each_keep_their_report(prefect_server: ServerInfo, warm: Path) -> None:
    """Two runs at once on one artifacts folder: neither report is lost, the root copies are one whole run's."""
    with ThreadPoolExecutor(2) as pool:
        processes = list(pool.map(lambda _: run_cli(tiny_argv(warm)), range(2)))
    assert all(p.returncode == 0 for p in processes), [p.stderr[-2000:] for p in processes]
    run_ids = {str(flow_run_id_from_output(p.stdout)) for p in processes}
    assert len(run_ids) == 2
    reports = sorted((warm / "reports").glob("*/summary.json"))
    mine = {json.loads(path.read_text())["flow_run_id"]: path.parent for path in reports}
    assert run_ids <= set(mine)  # each run's own folder, untouched by the other
    for run_id in run_ids:
        assert (mine[run_id] / "report.md").read_text().startswith("# nodecore training grid")
    latest = (warm / "reports" / "LATEST").read_text().strip()
    assert json.loads((warm / "summary.json").read_text())["flow_run_id"] in run_ids
    assert (warm / "reports" / latest / "summary.json").is_file()


def test_adding_a_solver_recomputes_only_the_new_cell(prefect_server: ServerInfo, warm: Path) -> None:
    solvers = [*SOLVERS, "midpoint"]
    runs = _completed(prefect_server, tiny_config(warm, solvers=solvers), count=len(CELL_TASKS) + 1)
    # Only the new cell is submitted: the dataset, the field and the other cells come whole from the cache.
    assert state_names(runs) == {name: "Completed" for name in _cell_tasks("midpoint@cpu") | {"report"}}
    assert len(stage_folders(warm, "train")) == 3 and len(stage_folders(warm, "generate-dataset")) == 1


def test_changed_nodecore_version_recomputes_every_stage(
    prefect_server: ServerInfo, warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {stage: stage_folders(warm, stage) for stage in STAGE_DIRS}
    monkeypatch.setattr(nodecore, "__version__", nodecore.__version__ + "+changed")
    solvers = ["euler"]
    runs = _completed(prefect_server, tiny_config(warm, solvers=solvers), count=_expected_counts(solvers))
    assert state_names(runs) == {name: "Completed" for name in expected_task_labels(solvers)}
    for stage in STAGE_DIRS:  # new keys, new folders; the old version's artifacts are left alone
        after = stage_folders(warm, stage)
        assert before[stage] < after and len(after - before[stage]) == 1, stage


def test_changed_plotting_code_recomputes_only_rendering(
    prefect_server: ServerInfo, warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if nodecore/plotting.py were edited: only the stages whose code reaches it get new keys."""
    plotting = NODECORE_DIR / "plotting.py"
    original = tasks.cache.code_digest

    def edited_plotting(source_file: Path) -> str:
        digest = original(source_file)
        return digest + "+plotting-edited" if plotting in nodecore_dependencies(source_file) else digest

    monkeypatch.setattr(tasks.cache, "code_digest", edited_plotting)
    # Each cell is submitted (its render stage has a new key); its other stages come back Cached.
    runs = _completed(prefect_server, tiny_config(warm), count=len(CELL_TASKS) * len(SOLVERS) + 1)
    recomputed = {name for name, state in state_names(runs).items() if state != "Cached"}
    assert recomputed == {f"render-{cell}" for cell in cells()} | {"report"}
    assert all(run.name.endswith(" (cached)") == (state_names(runs)[name] == "Cached") for name, run in runs.items())
    assert len(stage_folders(warm, "render")) == 4 and len(stage_folders(warm, "train")) == 2


def test_refresh_option_recomputes_everything(prefect_server: ServerInfo, warm: Path) -> None:
    solvers = ["euler"]
    config = tiny_config(warm, "--run.refresh", solvers=solvers)
    assert config.run.refresh is True
    before = {p: p.stat().st_mtime_ns for p in warm.glob(f"*/*/{MANIFEST}")}
    runs = _completed(prefect_server, config, count=_expected_counts(solvers))
    assert state_names(runs) == {name: "Completed" for name in expected_task_labels(solvers)}
    # Rewritten in place, or (downstream of a retrained checkpoint, whose bytes differ) under a new key.
    written = {p for p in warm.glob(f"*/*/{MANIFEST}") if before.get(p) != p.stat().st_mtime_ns}
    assert sorted(p.parent.parent.name for p in written) == sorted(STAGE_DIRS)  # each stage once
    same_key = ("generate-dataset", "build-vector-field", "train")
    assert all(p in before for p in written if p.parent.parent.name in same_key)


def test_deleted_artifact_recomputes_exactly_its_stage(prefect_server: ServerInfo, warm: Path) -> None:
    plots = _summary_cells(warm)["euler@cpu"]["plots"]
    deleted = plots.path(warm, "depth")
    deleted.unlink()
    assert read_manifest(deleted.parent.parent, warm) is None  # the manifest no longer verifies
    runs = _completed(prefect_server, tiny_config(warm), count=len(CELL_TASKS) + 1)  # rk4's cell: not submitted
    assert set(runs) == _cell_tasks("euler@cpu") | {"report"}
    recomputed = {name for name, state in state_names(runs).items() if state != "Cached"}
    assert recomputed == {"render-euler@cpu", "report"}
    rebuilt = read_manifest(deleted.parent.parent, warm)  # <stage>/<key>/: the build's folder is below it
    assert rebuilt is not None and rebuilt.path(warm, "depth").read_bytes()[:8] == PNG_SIGNATURE


def test_stage_folder_without_manifest_is_not_taken_as_cached(prefect_server: ServerInfo, warm: Path) -> None:
    """A killed run leaves a stage's files but no manifest (it is written last): that stage is redone."""
    metrics = _summary_cells(warm)["rk4@cpu"]["metrics"]
    folder = metrics.path(warm, "metrics").parent.parent  # <stage>/<key>/, above the build's folder
    (folder / MANIFEST).unlink()
    metrics.path(warm, "metrics").write_text("{half a file")
    runs = _completed(prefect_server, tiny_config(warm), count=len(CELL_TASKS) + 1)
    assert set(runs) == _cell_tasks("rk4@cpu") | {"report"}
    recomputed = {name for name, state in state_names(runs).items() if state != "Cached"}
    assert recomputed == {"evaluate-rk4@cpu", "report"}
    rebuilt = read_manifest(folder, warm)
    assert rebuilt is not None and 0.0 <= json.loads(rebuilt.path(warm, "metrics").read_text())["test_accuracy"] <= 1.0


# --- retries and failures ------------------------------------------------------------------------------


def test_transient_training_failure_is_retried_and_resumes_from_its_checkpoint(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tasks.faults.ENV, "train:transient:1")
    solvers = ["euler"]
    root = tmp_path / "artifacts"
    runs = _completed(prefect_server, tiny_config(root, solvers=solvers), count=_expected_counts(solvers))
    train = runs["train-euler@cpu"]
    assert train.state_name == "Completed" and train.run_count == 2
    history = state_history(prefect_server, train)
    assert "AwaitingRetry" in history and "Retrying" in history and history[-1] == "Completed"
    assert all(run.run_count == 1 for name, run in runs.items() if name != "train-euler@cpu")
    trained = _summary_cells(root)["euler@cpu"]["trained"]
    assert trained.data["resumed_from_epoch"] == 2  # the first resume checkpoint (checkpoint_every=2)
    assert load_checkpoint(trained.path(root, "checkpoint")).epoch == 4
    assert json.loads(trained.path(root, "history").read_text())["epoch"] == [0, 1, 2, 3]


def test_permanent_failure_fails_the_run_without_retry_and_a_rerun_reuses_the_rest(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "artifacts"
    monkeypatch.setenv(tasks.faults.ENV, "evaluate:permanent")
    failed = run_flow(prefect_server, tiny_config(root))
    assert failed.is_failed()
    assert "injected permanent failure in stage 'evaluate'" in failed.message  # the cause, not "upstream failed"
    assert isinstance(failed.result(raise_on_failure=False), tasks.faults.InjectedPermanentFault)
    flow_run_id = failed.state_details.flow_run_id
    flow_run = read_flow_run(prefect_server, flow_run_id)
    assert flow_run.state_type is StateType.FAILED and "InjectedPermanentFault" in flow_run.state.message

    # Every stage ran to its end (none left cancelled or pending); the report was never started.
    runs = task_runs(prefect_server, flow_run_id, count=_expected_counts(SOLVERS) - 1)
    assert set(runs) == expected_task_labels(report=False)
    for name, run in runs.items():
        if name.startswith("evaluate-"):
            assert run.state_name == "Failed" and run.run_count == 1, (name, run.state_name, run.run_count)
            assert "AwaitingRetry" not in state_history(prefect_server, run)
        else:
            assert run.state_name == "Completed", (name, run.state_name)

    monkeypatch.delenv(tasks.faults.ENV)
    # The dataset and field are taken from the cache unsubmitted; each cell is submitted, its training Cached.
    rerun = _completed(prefect_server, tiny_config(root), count=len(CELL_TASKS) * len(SOLVERS) + 1)
    names = state_names(rerun)
    assert set(names) == _cell_tasks(*cells()) | {"report"}
    assert {name for name, state in names.items() if state != "Cached"} == {
        *(f"evaluate-{cell}" for cell in cells()), "report"}


# --- bad parameters ------------------------------------------------------------------------------------

BAD_OPTIONS = {
    "unknown solver": (["--solvers", "foo"], ["--solvers: ", "(got 'foo')", *map(repr, SOLVER_NAMES)]),
    "missing gpu": (["--devices", "cuda:7"], ["--devices", "'cuda:7' does not exist", "valid devices: cpu"]),
    "negative epochs": (["--training.epochs", "-1"], ["--training.epochs: ", "greater than or equal to 0", "'-1'"]),
    "unknown dataset": (["--dataset.dataset_type", "bogus"],
                        ["--dataset.dataset_type", "'bogus'", *map(repr, DATASET_TYPES)]),
}


@pytest.fixture(scope="module")
def rejected(prefect_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each bad command line, run as a script (all at once: each pays the import of torch and Prefect)."""
    base = tmp_path_factory.mktemp("rejected")
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")

    def run(case: str) -> tuple[Path, subprocess.CompletedProcess]:
        root = base / case.replace(" ", "-")
        options, _ = BAD_OPTIONS[case]
        return root, run_cli([*tiny_argv(root), *options], timeout=120)

    with ThreadPoolExecutor(len(BAD_OPTIONS)) as pool:
        return dict(zip(BAD_OPTIONS, pool.map(run, BAD_OPTIONS)))


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_command_line_exits_2_naming_valid_values(rejected: dict[str, Any], case: str) -> None:
    root, process = rejected[case]
    assert process.returncode == 2, (process.stdout[-2000:], process.stderr[-2000:])
    assert "python flows/train_flow.py: error: " in process.stderr and "usage:" not in process.stderr
    assert process.stderr.rstrip().endswith(HINT)  # the error and one hint line, no usage dump
    for text in BAD_OPTIONS[case][1]:
        assert text in process.stderr, (text, process.stderr)
    assert "Beginning flow run" not in process.stdout + process.stderr
    assert not root.exists()  # no stage ran


def test_missing_device_fails_the_flow_before_any_task_run(prefect_server: ServerInfo, tmp_path: Path) -> None:
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    root = tmp_path / "artifacts"
    config = tiny_config(root).model_copy(update={"devices": ["cuda:3"]})
    state = run_flow(prefect_server, config)
    assert state.is_failed()
    assert "'cuda:3' does not exist" in state.message and "valid devices: cpu" in state.message
    flow_run_id = state.state_details.flow_run_id
    assert read_flow_run(prefect_server, flow_run_id).state_type is StateType.FAILED
    time.sleep(1.0)  # give the server time to store any task run it was sent
    assert task_runs(prefect_server, flow_run_id, count=0, timeout=1) == {}
    assert not root.exists()
