"""Benchmark: the torchdyn moons tutorial on nodecore vs raw torchdiffeq, side by side in one process.

Four variants train the same network from the same initial weights with the same solver and tolerances:
nodecore autograd vs ``torchdiffeq.odeint``, and nodecore adjoint vs ``torchdiffeq.odeint_adjoint``.
Runs are interleaved and repeated; the median wall time of each variant gives the ratios.

    python bench/tutorial_bench.py                 # 200 epochs, 3 repeats, CPU
    python bench/tutorial_bench.py --device cuda:0 --json artifacts/bench.json

Memory: on CUDA, peak allocated memory of one training step; on CPU, the bytes autograd saves for the
backward pass during one forward (what grows with solver steps), measured with saved-tensor hooks.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from nodecore import NeuralODE, ToyDataset

SOLVER, ATOL, RTOL, ATOL_ADJOINT, RTOL_ADJOINT = "dopri5", 1e-3, 1e-3, 1e-4, 1e-4


class _CountingField(nn.Module):
    """Raw torchdiffeq's field: the same network, counting evaluations."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.net(x)


@dataclass
class Result:
    variant: str
    seconds: float
    nfe_forward_per_step: float
    nfe_backward_per_step: float
    accuracy: float
    peak_memory_mb: float


def _variant(name: str, net: nn.Module) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], Callable[[], int]]:
    """Returns (module to optimise, forward(x, t) -> trajectory, total NFE counter)."""
    if name.startswith("nodecore"):
        sensitivity = name.split("-")[1]
        model = NeuralODE(net, solver=SOLVER, sensitivity=sensitivity, atol=ATOL, rtol=RTOL,
                          atol_adjoint=ATOL_ADJOINT, rtol_adjoint=RTOL_ADJOINT)
        return model, lambda x, t: model(x, t)[1], lambda: model.vf.nfe
    field = _CountingField(net)
    if name == "torchdiffeq-odeint":
        forward = lambda x, t: odeint(field, x, t, method=SOLVER, rtol=RTOL, atol=ATOL)  # noqa: E731
    else:
        forward = lambda x, t: odeint_adjoint(field, x, t, method=SOLVER, rtol=RTOL, atol=ATOL,  # noqa: E731
                                              adjoint_rtol=RTOL_ADJOINT, adjoint_atol=ATOL_ADJOINT)
    return field, forward, lambda: field.nfe


def _saved_bytes(forward: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> int:
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        seen[(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(x, t)
    return sum(seen.values())


def run_variant(name: str, init: nn.Module, data: tuple[Tensor, ...], epochs: int, device: torch.device) -> Result:
    X, y, X_test, y_test = data
    module, forward, nfe = _variant(name, copy.deepcopy(init).to(device))
    t_span = torch.linspace(0, 1, 5, device=device)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    nfe_fwd = nfe_bwd = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(epochs):
        before = nfe()
        loss = loss_fn(forward(X, t_span)[-1], y)
        after_forward = nfe()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        nfe_fwd += after_forward - before
        nfe_bwd += nfe() - after_forward
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _saved_bytes(forward, X, t_span)
    with torch.no_grad():
        accuracy = (forward(X_test, t_span)[-1].argmax(1) == y_test).float().mean().item()
    return Result(name, seconds, nfe_fwd / epochs, nfe_bwd / epochs, accuracy, peak / 2**20)


VARIANTS = ("torchdiffeq-odeint", "nodecore-autograd", "torchdiffeq-odeint_adjoint", "nodecore-adjoint")
PAIRS = {"nodecore-autograd": "torchdiffeq-odeint", "nodecore-adjoint": "torchdiffeq-odeint_adjoint"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    X, y = ToyDataset().generate(512, "moons", noise=0.1, seed=0)
    X_test, y_test = ToyDataset().generate(2048, "moons", noise=0.1, seed=1)
    data = tuple(t.to(device) for t in (X, y, X_test, y_test))
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    runs: dict[str, list[Result]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:  # interleaved, so drift on a noisy machine hits every variant alike
            runs[name].append(run_variant(name, init, data, args.epochs, device))

    rows = []
    for name in VARIANTS:
        median = statistics.median(r.seconds for r in runs[name])
        row = asdict(runs[name][0]) | {"seconds": median, "all_seconds": [r.seconds for r in runs[name]]}
        rows.append(row)
    by_name = {row["variant"]: row for row in rows}
    ratios = {f"{ours} / {raw}": by_name[ours]["seconds"] / by_name[raw]["seconds"] for ours, raw in PAIRS.items()}

    print(f"moons tutorial, {args.epochs} epochs, {SOLVER} atol=rtol={ATOL}, adjoint atol=rtol={ATOL_ADJOINT}, "
          f"device {device}, median of {args.repeats}")
    print(f"{'variant':28} {'seconds':>8} {'nfe fwd/step':>13} {'nfe bwd/step':>13} {'accuracy':>9} {'peak MB':>8}")
    for row in rows:
        print(f"{row['variant']:28} {row['seconds']:8.2f} {row['nfe_forward_per_step']:13.1f} "
              f"{row['nfe_backward_per_step']:13.1f} {row['accuracy']:9.4f} {row['peak_memory_mb']:8.3f}")
    for pair, ratio in ratios.items():
        print(f"time ratio {pair}: {ratio:.3f}")
    report = {"epochs": args.epochs, "repeats": args.repeats, "device": str(device), "solver": SOLVER,
              "torch": torch.__version__, "results": rows, "ratios": ratios}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
