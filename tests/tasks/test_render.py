"""The render stage: what it passes to the plots (the cell, labels, augmented dimensions); no Prefect server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

import nodecore.plotting
import tasks.render
from nodecore.checkpoints import build_model, classifier_config, save_checkpoint
from nodecore.classifiers import ODEClassifier
from nodecore.dataset_io import write_dataset
from nodecore.datasets import generate_points
from nodecore.fields import Augmenter
from nodecore.neuralode import NeuralODE
from nodecore.trajectory_io import write_trajectory
from nodecore.training import depth_grid, train
from tasks.cache import StageOutput
from tasks.config import ModelConfig, OutputConfig
from nodecore.files import file_digest
from tasks.render import augmented_dims, render_plots
from tasks.signing import KEY_ENV

MODEL = ModelConfig(t_points=5)
OUTPUT = OutputConfig(trajectory_points=20, trajectory_samples=64, plot_samples=64)


def _output(root: Path, stage: str, data: dict[str, Any], **files: Path) -> StageOutput:
    relative = {name: path.relative_to(root).as_posix() for name, path in files.items()}
    digests = {name: file_digest(path) for name, path in files.items()}  # the stage checks its inputs' digests
    return StageOutput(stage=stage, key="k" * 24, files=relative, digests=digests, data=data)


def trained_cell(root: Path, *, kind: str = "node", dataset_type: str = "moons", epochs: int = 2,
                 n_samples: int = 128) -> dict[str, StageOutput]:
    """The stage outputs render reads, for a ``kind`` model trained ``epochs`` epochs on ``dataset_type``."""
    X, y = generate_points(n_samples, dataset_type, noise=0.1, seed=0)
    test = write_dataset(root / "data" / "test.parquet", X, y, metadata={"dataset_type": dataset_type,
                                                                        "params": {}, "seed": 0})
    n_classes = int(y.max()) + 1
    config = classifier_config(kind, dim=2, n_classes=n_classes, augment_dims=2 if kind == "anode" else 0,
                               ode={"solver": "rk4"})
    torch.manual_seed(0)
    model = build_model(config)
    train(model, X, y, t_span=depth_grid(MODEL.t_end, MODEL.t_points), epochs=epochs, lr=0.02)
    checkpoint = save_checkpoint(root / "train" / "model.pt", model, config=config)
    solve = model.states if isinstance(model, ODEClassifier) else model
    with torch.no_grad():
        t_eval, trajectory = solve(X[: OUTPUT.trajectory_samples], depth_grid(MODEL.t_end, OUTPUT.trajectory_points))
    path = write_trajectory(root / "trajectories" / "trajectories.parquet", t_eval, trajectory,
                            y[: OUTPUT.trajectory_samples], metadata={"solver": "rk4", "device": "cpu"})
    cell = f"{'' if kind == 'node' else kind + '-'}rk4@cpu"
    return {
        "dataset": _output(root, "generate-dataset", {"dim": 2, "classes": n_classes}, test=test),
        "trained": _output(root, "train", {"cell": cell, "solver": "rk4", "device": "cpu"}, checkpoint=checkpoint),
        "trajectories": _output(root, "integrate-trajectories", {}, trajectories=path),
    }


def render(root: Path, outputs: dict[str, StageOutput]) -> dict[str, Path]:
    """Run the render stage's body (no Prefect server, no cache) and return the PNGs it wrote (each beside its
    JPEG thumbnail)."""
    built = render_plots.fn(root=str(root), **outputs, model=MODEL, output=OUTPUT)
    assert set(built.files) == {*built.data["plots"], *(f"{name}-thumbnail" for name in built.data["plots"])}
    assert all((root / built.files[f"{name}-thumbnail"]).read_bytes()[:2] == b"\xff\xd8" for name in built.data["plots"])
    return {name: root / built.files[name] for name in built.data["plots"]}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The figures the render stage saves, by plot name, as it saves them."""
    monkeypatch.setenv(KEY_ENV, "render-test-key-0123456789")
    saved: dict[str, Figure] = {}
    save = nodecore.plotting.save_figure  # the stage imports it when it runs

    def keep(figure: Figure, path: Path) -> Path:
        saved[Path(path).stem] = figure
        return save(figure, path)

    monkeypatch.setattr(nodecore.plotting, "save_figure", keep)
    return saved


def _texts(figure: Figure) -> list[str]:
    texts = [t.get_text() for t in figure.texts] + ([figure._suptitle.get_text()] if figure._suptitle else [])
    for ax in figure.axes:
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")] + [t.get_text() for t in ax.texts]
    return texts


def test_every_plot_of_a_node_cell_has_the_cell_as_its_one_suptitle(tmp_path: Path, figures: dict[str, Figure]):
    files = render(tmp_path, trained_cell(tmp_path))
    assert set(files) == set(tasks.render.PLOTS) and all(path.read_bytes()[:4] == b"\x89PNG" for path in files.values())
    for name, figure in figures.items():
        assert figure.get_suptitle() == "rk4@cpu", name
        titles = [ax.get_title() for ax in figure.axes if ax.get_label() != "<colorbar>"]
        assert all(titles) and "rk4@cpu" not in " ".join(titles), (name, titles)
        assert not any("augmented" in text for text in _texts(figure)), name
    # the vector field's trajectories are the test points, coloured and named by class
    legend = [t.get_text() for t in figures["vector_field"].axes[0].get_legend().get_texts()]
    assert {"class 0 test-point trajectories", "class 1 test-point trajectories"} <= set(legend)


def test_an_anode_cell_notes_that_its_augmented_dimensions_start_at_zero(tmp_path: Path, figures: dict[str, Figure]):
    render(tmp_path, trained_cell(tmp_path, kind="anode"))
    assert set(figures) == {"depth", "state_space", "decision_boundary"}  # a 4-D state has no 2-D vector field
    assert all(figure.get_suptitle() == "anode-rk4@cpu" for figure in figures.values())
    depth_titles = [ax.get_title() for ax in figures["depth"].axes]
    assert [("starts at 0" in title) for title in depth_titles] == [True, True, False, False]
    state_space = figures["state_space"].axes[0]
    assert any("starts at 0" in text.get_text() for text in state_space.texts)
    assert "augmented" in state_space.get_xlabel() and "augmented" in state_space.get_ylabel()


@pytest.mark.parametrize("order, expected", [("first", (0, 1)), ("last", (3, 4))])
def test_augmented_dims_follow_the_augmenters_layout(order: str, expected: tuple[int, ...]):
    node = NeuralODE(torch.nn.Linear(5, 5))
    classifier = ODEClassifier(node, torch.nn.Linear(5, 2), augmenter=Augmenter(1, 2, order=order))
    assert augmented_dims(classifier, 5) == expected
    learned = ODEClassifier(node, torch.nn.Linear(5, 2), augmenter=Augmenter(1, 2, torch.nn.Linear(3, 2)))
    assert augmented_dims(learned, 5) == ()  # a learned augmentation does not start at 0
    assert augmented_dims(node, 2) == ()


def test_plots_drawn_in_a_stage_worker_process_are_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tasks import offload

    monkeypatch.setenv(KEY_ENV, "render-test-key-0123456789")
    outputs = trained_cell(tmp_path / "cell")
    in_place = {name: path.read_bytes() for name, path in render(tmp_path / "cell", outputs).items()}
    for path in (tmp_path / "cell").rglob("*.png"):
        path.unlink()
    with offload.worker_processes(1):
        in_worker = {name: path.read_bytes() for name, path in render(tmp_path / "cell", outputs).items()}
    assert set(in_worker) == set(in_place) == {"depth", "state_space", "vector_field", "decision_boundary"}
    assert in_worker == in_place


def test_with_two_spare_cores_the_plots_are_drawn_in_two_calls_with_the_same_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The last cell of a run (no training left) draws its decision boundary beside its other plots; the files are
    those of one call in place."""
    from tasks import offload

    monkeypatch.setenv(KEY_ENV, "render-test-key-0123456789")
    monkeypatch.setattr(offload, "usable_cores", lambda: 2)
    outputs = trained_cell(tmp_path / "cell")
    in_place = {name: path.read_bytes() for name, path in render(tmp_path / "cell", outputs).items()}
    for path in (tmp_path / "cell").rglob("*.png"):
        path.unlink()
    parts: list[tuple[str, ...]] = []
    submit = offload.submit

    def recorded(fn: Any, *args: Any, plots: tuple[str, ...], **kwargs: Any) -> Any:
        parts.append(tuple(plots))
        return submit(fn, *args, plots=plots, **kwargs)

    monkeypatch.setattr(offload, "submit", recorded)
    with offload.worker_processes(2):
        split = {name: path.read_bytes() for name, path in render(tmp_path / "cell", outputs).items()}
        assert parts == [("depth", "state_space", "vector_field"), ("decision_boundary",)]
        parts.clear()
        for path in (tmp_path / "cell").rglob("*.png"):
            path.unlink()
        busy = submit(time.sleep, 2.0)  # a training holds a core: one call draws everything
        render(tmp_path / "cell", outputs)
        assert parts == [tasks.render.PLOTS]
        busy.result()
    assert list(split) == list(in_place) and split == in_place
