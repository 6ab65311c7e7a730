"""``python flows/train_flow.py`` refuses bad values before it contacts a server or writes anything.

``main()`` runs in-process here with the server start replaced by a tripwire: a refused command line must
exit with status 2 and two lines on stderr (the error, then the hint), and leave the artifacts folder absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import flows.server
import tasks.faults
from flows.cli import HINT
from flows.train_flow import main
from tests.flows._pipeline import tiny_argv


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused command line contacted the Prefect server")

    monkeypatch.setattr(flows.server, "ensure_server", tripwire)
    monkeypatch.delenv(tasks.faults.ENV, raising=False)


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python flows/train_flow.py: error: ") and err.splitlines()[1:] == [HINT], err
    return err


@pytest.mark.parametrize(("options", "expected"), [
    (["--training.lr", "inf"], ["--training.lr: ", "finite number", "'inf'"]),
    (["--solver.step_size", "inf"], ["--solver.step_size: ", "finite number", "'inf'"]),
    (["--model.t_end", "inf"], ["--model.t_end: ", "finite number", "'inf'"]),
    (["--dataset.seed", str(2**32)], ["--dataset.seed: ", "'4294967296'", "less than or equal to 4294967295"]),
    (["--dataset.dataset_type", "gaussians"], ["--models: ", "'gaussians' has 7 classes", "'anode' or 'deq'",
                                               "moons, circles, spirals, spheres"]),
    (["--run.artifacts_dir", ""], ["--run.artifacts_dir: ", "'' names no folder", "'artifacts'"]),
])
def test_bad_config_values_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str],
                                       expected: list[str]) -> None:
    root = tmp_path / "artifacts"
    err = _refused(capsys, tiny_argv(root, *options))
    for text in expected:
        assert text in err, (text, err)
    assert not root.exists()


@pytest.mark.parametrize("under", [False, True])
def test_an_artifacts_path_that_is_or_runs_through_a_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, under: bool
) -> None:
    file = tmp_path / "taken"
    file.write_text("keep me")
    root = file / "artifacts" if under else file
    err = _refused(capsys, tiny_argv(root))
    assert f"--run.artifacts_dir: '{root}'" in err and f"'{file}' exists and is not a folder" in err
    assert file.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [file]


def test_a_malformed_fault_hook_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tasks.faults.ENV, "train:transient:abc")
    root = tmp_path / "artifacts"
    err = _refused(capsys, tiny_argv(root))
    assert "NODECORE_FAULTS entry 'train:transient:abc': 'abc' is not a count" in err
    assert "STAGE:transient:N" in err and "STAGE:permanent" in err
    assert not root.exists()


@pytest.mark.parametrize(("address", "api_url", "refused"), [
    ("tcp://10.0.0.5:8786", "http://127.0.0.1:4200/api", True),
    ("10.0.0.5:8786", "http://localhost:4200/api", True),
    ("tcp://10.0.0.5:8786", "http://10.0.0.1:4200/api", False),
    ("tcp://127.0.0.1:8786", "http://127.0.0.1:4200/api", False),  # a cluster on this host shares its loopback
])
def test_a_remote_dask_cluster_needs_an_api_its_workers_reach(address: str, api_url: str, refused: bool) -> None:
    from flows.train_flow import check_dask_reaches_api
    from tasks.config import PipelineConfig

    config = PipelineConfig.model_validate({"run": {"executor": "dask", "dask_address": address}})
    if not refused:
        check_dask_reaches_api(config, api_url)
        return
    with pytest.raises(ValueError, match=f"workers at {address} would call the Prefect API at {api_url}.*"
                                         "set PREFECT_API_URL"):
        check_dask_reaches_api(config, api_url)


def test_a_remote_dask_cluster_without_an_api_it_reaches_is_refused_before_a_server_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No API configured: the run would start this checkout's server on loopback, which the workers cannot reach."""
    monkeypatch.setattr(flows.server, "user_api_url", lambda: None)
    root = tmp_path / "artifacts"
    err = _refused(capsys, tiny_argv(root, "--run.executor", "dask", "--run.dask_address", "tcp://10.0.0.5:8786"))
    assert "--run.dask_address: the Dask workers at tcp://10.0.0.5:8786 would call the Prefect API at " in err
    assert "http://127.0.0.1" in err and "set PREFECT_API_URL" in err
    assert not root.exists()
