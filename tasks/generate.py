"""Stage 1: generate the train and test sets as Parquet files."""

from __future__ import annotations

from nodecore.dataset_io import write_dataset
from nodecore.datasets import generate_points, resolve_params
from tasks.cache import Built, StageContext, stage_task
from tasks.faults import maybe_fail
from tasks.retry import RETRYABLE
from tasks.config import DatasetConfig


@stage_task("generate-dataset", **RETRYABLE)
def generate_dataset(ctx: StageContext, *, dataset: DatasetConfig) -> Built:
    """Draw the training and held-out test sets and write them as ``train.parquet`` / ``test.parquet``.

    Each split holds exactly ``n_train`` / ``n_test`` points, classes balanced, shuffled (``generate_points``;
    ``ToyDataset().generate`` would count spirals per arm and gaussians per Gaussian, as torchdyn does).
    """
    maybe_fail("generate")
    files = {}
    for split, n, seed in (("train", dataset.n_train, dataset.seed), ("test", dataset.n_test, dataset.test_seed)):
        X, y = generate_points(n, dataset.dataset_type, noise=dataset.noise, seed=seed)
        metadata = {"dataset_type": dataset.dataset_type,
                    "params": resolve_params(dataset.dataset_type, noise=dataset.noise),
                    "seed": seed, "noise": dataset.noise, "split": split}
        files[split] = write_dataset(ctx.folder / f"{split}.parquet", X, y, metadata=metadata)
    return Built(files=files, data={"dim": int(X.shape[1]), "classes": int(y.max()) + 1})
