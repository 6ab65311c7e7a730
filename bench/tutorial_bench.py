"""Benchmark: the torchdyn moons tutorial job on several ODE libraries, side by side in one process.

    make bench-env && .venv-bench/bin/python bench/tutorial_bench.py
    .venv-bench/bin/python bench/tutorial_bench.py --epochs 20 --repeats 1          # a quick check
    .venv-bench/bin/python bench/tutorial_bench.py --device cuda:0 --json artifacts/tutorial_bench.json

``make bench-env`` builds the scratch venv ``.venv-bench`` with torchdyn and torchode beside the project;
neither is a dependency of nodecore. A variant whose library is missing is skipped with the reason printed.

The job (as in the torchdyn tutorial): 512 training moons, a 2-16-2 Tanh MLP as the vector field, Adam
(lr 0.01), full batch, ``t_span = linspace(0, 1, 5)``, dopri5 with atol = rtol = 1e-3 forward and 1e-4 for the
adjoint, cross-entropy on the final state; held-out accuracy on 2,048 fresh moons. Every variant starts from
the same initial weights and sees the same data. Variants:

- torchdyn ``NeuralODE`` with ``sensitivity='autograd'`` and ``'adjoint'``;
- torchdiffeq ``odeint`` and ``odeint_adjoint``;
- torchode ``AutoDiffAdjoint(Dopri5, IntegralController)``, backpropagating through the solver (torchode
  steps every sample with its own step size, so its batched NFE counts the slowest sample's steps);
- nodecore ``NeuralODE`` with each sensitivity on each ``backend=``, reading the inner points of ``t_span`` off
  the dense output (``interpolator='dense'``, as torchdiffeq does; the pipeline's setting), and on its own engine
  with ``interpolator='step'`` (stepping onto every point, torchdyn's way and NeuralODE's default).

Each library is used as a tutorial user would: torchdyn and nodecore get the bare MLP (and count NFE
themselves); torchdiffeq and torchode get a small ``f(t, x)`` module that counts its calls. The adjoint's
seminorm is off for torchdyn and torchdiffeq (their defaults) and on for nodecore (the pipeline's setting; its
NeuralODE default is off, as torchdyn's) unless ``--seminorm on|off`` sets it for all.

Measurements, interleaved round-robin over variants and repeats (after one short untimed warm-up per variant):

1. Training: median wall time per variant, its ratio to torchdyn-adjoint and to torchdiffeq-odeint, NFE
   forward/backward per training step, held-out accuracy, and memory (CUDA: peak allocated in training;
   CPU: bytes autograd saves for the backward pass during one forward, via saved-tensor hooks).
2. No-grad solve: one dopri5 solve of one field (the weights torchdiffeq-odeint trained, or the initial
   ones with ``--solve-field initial``) from the 512x2 training state, per library; its time per NFE over
   the time per call of a bare Python loop calling the MLP as often. The ratio is each library's per-step
   overhead: 1.0 would mean the solver costs nothing beyond the network itself.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

import nodecore
from nodecore import ToyDataset

SOLVER, ATOL, RTOL, ATOL_ADJOINT, RTOL_ADJOINT = "dopri5", 1e-3, 1e-3, 1e-4, 1e-4
N_TRAIN, N_TEST, NOISE, LR = 512, 2048, 0.1, 0.01
REFERENCES = ("torchdyn-adjoint", "torchdiffeq-odeint")  # the ratio columns, in this order
SOLVE_FIELD_FROM = "torchdiffeq-odeint"  # whose trained weights the no-grad solve uses

Forward = Callable[[Tensor, Tensor], Tensor]  # (x [B, D], t_span [T]) -> final state [B, D]


# --------------------------------------------------------------------------------------------------
# The variants: each builds (module to optimise, forward, NFE counter) around a fresh copy of the MLP
# --------------------------------------------------------------------------------------------------


class CountingField(nn.Module):
    """``f(t, x) = net(x)``, counting calls: the field handed to libraries that want ``f(t, x)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.net(x)


@dataclass(frozen=True)
class Variant:
    name: str
    library: str  # the module that must import for the variant to run
    sensitivity: str  # 'autograd' (backprop through the solver) or 'adjoint'
    build: Callable[[nn.Module, bool | None], tuple[nn.Module, Forward, Callable[[], float]]]


def _torchdyn(sensitivity: str) -> Callable:
    def build(net: nn.Module, seminorm: bool | None):
        from torchdyn.core import NeuralODE

        extra = {} if seminorm is None else {"seminorm": seminorm}
        with contextlib.redirect_stdout(io.StringIO()):  # "we've wrapped it for you" for a field without t
            model = NeuralODE(net, sensitivity=sensitivity, solver=SOLVER, atol=ATOL, rtol=RTOL,
                              atol_adjoint=ATOL_ADJOINT, rtol_adjoint=RTOL_ADJOINT, **extra)
        return model, lambda x, t: model(x, t)[1][-1], lambda: model.vf.nfe

    return build


def _torchdiffeq(adjoint: bool) -> Callable:
    def build(net: nn.Module, seminorm: bool | None):
        from torchdiffeq import odeint, odeint_adjoint

        f = CountingField(net)
        if not adjoint:
            return f, lambda x, t: odeint(f, x, t, method=SOLVER, rtol=RTOL, atol=ATOL)[-1], lambda: f.nfe
        extra = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}

        def forward(x: Tensor, t: Tensor) -> Tensor:
            return odeint_adjoint(f, x, t, method=SOLVER, rtol=RTOL, atol=ATOL, adjoint_rtol=RTOL_ADJOINT,
                                  adjoint_atol=ATOL_ADJOINT, **extra)[-1]

        return f, forward, lambda: f.nfe

    return build


def _torchode(net: nn.Module, seminorm: bool | None):
    import torchode

    f = CountingField(net)
    term = torchode.ODETerm(f)
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term),
                                      torchode.IntegralController(atol=ATOL, rtol=RTOL, term=term))

    def forward(x: Tensor, t: Tensor) -> Tensor:
        problem = torchode.InitialValueProblem(y0=x, t_eval=t.expand(x.shape[0], -1))
        return solver.solve(problem).ys[:, -1]

    return f, forward, lambda: f.nfe


def _nodecore(sensitivity: str, backend: str, interpolator: str = "dense") -> Callable:
    def build(net: nn.Module, seminorm: bool | None):
        model = nodecore.NeuralODE(net, solver=SOLVER, sensitivity=sensitivity, atol=ATOL, rtol=RTOL,
                                   atol_adjoint=ATOL_ADJOINT, rtol_adjoint=RTOL_ADJOINT, backend=backend,
                                   interpolator=interpolator, seminorm=True if seminorm is None else seminorm)
        return model, lambda x, t: model(x, t)[1][-1], lambda: model.vf.nfe

    return build


def all_variants() -> list[Variant]:
    variants = [
        Variant("torchdyn-autograd", "torchdyn.core", "autograd", _torchdyn("autograd")),
        Variant("torchdyn-adjoint", "torchdyn.core", "adjoint", _torchdyn("adjoint")),
        Variant("torchdiffeq-odeint", "torchdiffeq", "autograd", _torchdiffeq(adjoint=False)),
        Variant("torchdiffeq-odeint_adjoint", "torchdiffeq", "adjoint", _torchdiffeq(adjoint=True)),
        Variant("torchode-autograd", "torchode", "autograd", _torchode),
    ]
    for backend in nodecore.BACKENDS:
        for sensitivity in ("autograd", "adjoint"):
            variants.append(Variant(f"nodecore-{backend}-{sensitivity}", "nodecore", sensitivity,
                                    _nodecore(sensitivity, backend)))
    # nodecore's engine stepping onto each point of t_span, as torchdyn does (NeuralODE's default).
    for sensitivity in ("autograd", "adjoint"):
        variants.append(Variant(f"nodecore-step-{sensitivity}", "nodecore", sensitivity,
                                _nodecore(sensitivity, "nodecore", "step")))
    return variants


def missing_library(module: str) -> str | None:
    """Why ``module`` cannot be imported, or None when it can."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure means "skip this variant"
        return f"{type(err).__name__}: {err}"
    return None


def cpu_model() -> str:
    """The processor's name: ``platform.processor()``, else /proc/cpuinfo's model name (Linux)."""
    if platform.processor():
        return platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def library_versions() -> dict[str, str | None]:
    versions = {}
    for dist in ("torch", "nodecore", "torchdiffeq", "torchdyn", "torchode"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(forward: Forward, x: Tensor, t: Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(x, t)
    return sum(seen.values())


@dataclass
class TrainRun:
    variant: str
    seconds: float
    nfe_forward_per_step: float
    nfe_backward_per_step: float
    accuracy: float
    memory_mb: float
    trained: nn.Module = field(repr=False)


def train(variant: Variant, init: nn.Module, data: tuple[Tensor, ...], t_span: Tensor, epochs: int,
          seminorm: bool | None, device: torch.device) -> TrainRun:
    """Train a fresh copy of ``init`` for ``epochs`` full-batch steps; time it, count NFE, test it."""
    X, y, X_test, y_test = data
    net = copy.deepcopy(init).to(device)
    module, forward, nfe = variant.build(net, seminorm)
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    nfe_fwd = nfe_bwd = 0.0
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(epochs):
        before = nfe()
        loss = loss_fn(forward(X, t_span), y)
        after_forward = nfe()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        nfe_fwd += after_forward - before
        nfe_bwd += nfe() - after_forward
    _sync(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
    else:
        memory = _saved_bytes(forward, X, t_span)
    with torch.no_grad():
        accuracy = (forward(X_test, t_span).argmax(1) == y_test).float().mean().item()
    return TrainRun(variant.name, seconds, nfe_fwd / epochs, nfe_bwd / epochs, accuracy, memory / 2**20, net)


def time_solve(variant: Variant, net: nn.Module, x: Tensor, t_span: Tensor,
               device: torch.device) -> tuple[float, float]:
    """(seconds, NFE) of one no-grad solve of ``net`` from ``x`` with ``variant``'s library."""
    _, forward, nfe = variant.build(copy.deepcopy(net), None)
    with torch.no_grad():
        forward(x, t_span)  # warm-up (first-call checks, caches)
        before = nfe()
        _sync(device)
        started = time.perf_counter()
        forward(x, t_span)
        _sync(device)
        seconds = time.perf_counter() - started
    return seconds, nfe() - before


def time_bare_loop(net: nn.Module, x: Tensor, calls: int, device: torch.device) -> float:
    """Seconds for a plain Python loop calling ``net(x)`` ``calls`` times, no grad."""
    with torch.no_grad():
        net(x)
        _sync(device)
        started = time.perf_counter()
        for _ in range(calls):
            net(x)
        _sync(device)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def training_rows(runs: dict[str, list[TrainRun]]) -> list[dict]:
    rows = []
    for repeats in runs.values():
        first = asdict(repeats[0])
        first.pop("trained")
        rows.append(first | {"seconds": statistics.median(r.seconds for r in repeats),
                             "all_seconds": [r.seconds for r in repeats]})
    medians = {row["variant"]: row["seconds"] for row in rows}
    for row in rows:
        row["ratios"] = {ref: row["seconds"] / medians[ref] if ref in medians else None for ref in REFERENCES}
    return rows


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_training(rows: list[dict]) -> None:
    refs = "".join(f" {'/ ' + ref:>22}" for ref in REFERENCES)
    print(f"{'variant':30} {'seconds':>8}{refs} {'nfe fwd':>8} {'nfe bwd':>8} {'accuracy':>9} {'mem MB':>7}")
    for row in rows:
        ratios = "".join(f" {_ratio(row['ratios'][ref]):>22}" for ref in REFERENCES)
        print(f"{row['variant']:30} {row['seconds']:8.2f}{ratios} {row['nfe_forward_per_step']:8.1f} "
              f"{row['nfe_backward_per_step']:8.1f} {row['accuracy']:9.4f} {row['memory_mb']:7.3f}")


def solve_rows(samples: dict[str, list[tuple[float, float, float]]]) -> list[dict]:
    """Per library: median times, and the overhead ratio as the median of each repeat's paired ratio
    (solve and bare loop ran back to back, so drift on a loaded machine cancels)."""
    rows = []
    for name, repeats in samples.items():
        seconds = statistics.median(s for s, _, _ in repeats)
        bare = statistics.median(b for _, _, b in repeats)
        nfe = repeats[0][1]
        rows.append({"variant": name, "nfe": nfe, "seconds": seconds, "bare_loop_seconds": bare,
                     "seconds_per_nfe": seconds / nfe, "bare_seconds_per_call": bare / nfe,
                     "overhead_ratio": statistics.median(s / b for s, _, b in repeats),
                     "all_seconds": [s for s, _, _ in repeats], "all_bare_loop_seconds": [b for _, _, b in repeats]})
    return rows


def print_solve(rows: list[dict]) -> None:
    print(f"{'library (no-grad solve)':30} {'nfe':>5} {'ms/solve':>9} {'us/nfe':>8} {'bare us/call':>13} "
          f"{'per-NFE / bare':>15}")
    for row in rows:
        print(f"{row['variant']:30} {row['nfe']:5.0f} {1e3 * row['seconds']:9.2f} "
              f"{1e6 * row['seconds_per_nfe']:8.1f} {1e6 * row['bare_seconds_per_call']:13.1f} "
              f"{row['overhead_ratio']:15.2f}")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200, help="full-batch training steps (>= 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved training repeats per variant")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="untimed epochs per variant first")
    parser.add_argument("--solve-repeats", type=int, default=20, help="interleaved no-grad solves per library")
    parser.add_argument("--solve-field", choices=("trained", "initial"), default="trained")
    parser.add_argument("--seminorm", choices=("default", "on", "off"), default="default",
                        help="adjoint step control over the parameter gradients too ('off') or not ('on')")
    parser.add_argument("--device", default="cpu", help="e.g. cuda:0")
    parser.add_argument("--batch", type=int, default=N_TRAIN,
                        help=f"training moons, all in one full batch (default {N_TRAIN}, the tutorial's)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variant names")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this path")
    return parser.parse_args()


def available_variants(only: list[str] | None) -> list[Variant]:
    variants, reasons = [], {}
    unknown = sorted(set(only or ()) - {v.name for v in all_variants()})
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; the variants: {[v.name for v in all_variants()]}")
    for variant in all_variants():
        if only is not None and variant.name not in only:
            continue
        if variant.library not in reasons:
            reasons[variant.library] = missing_library(variant.library)
        if reasons[variant.library]:
            print(f"skipping {variant.name}: cannot import {variant.library} ({reasons[variant.library]})")
        else:
            variants.append(variant)
    return variants


def make_data(device: torch.device, n_train: int = N_TRAIN) -> tuple[Tensor, ...]:
    X, y = ToyDataset().generate(n_train, "moons", noise=NOISE, seed=0)
    X_test, y_test = ToyDataset().generate(N_TEST, "moons", noise=NOISE, seed=1)
    return tuple(t.to(device) for t in (X, y, X_test, y_test))


def main() -> None:
    args = parse_args()
    if args.epochs < 1 or args.repeats < 1 or args.solve_repeats < 1 or args.batch < 1:
        sys.exit("--epochs, --repeats, --solve-repeats and --batch must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seminorm = {"default": None, "on": True, "off": False}[args.seminorm]
    variants = available_variants(args.variants)
    if not variants:
        sys.exit("no variant can run")

    data = make_data(device, args.batch)
    t_span = torch.linspace(0, 1, 5, device=device)
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    for variant in variants if args.warmup_epochs > 0 else ():  # untimed: first-call costs hit no timed run
        train(variant, init, data, t_span, args.warmup_epochs, seminorm, device)
    runs: dict[str, list[TrainRun]] = {v.name: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:  # interleaved, so drift on a noisy machine hits every variant alike
            runs[variant.name].append(train(variant, init, data, t_span, args.epochs, seminorm, device))
    train_table = training_rows(runs)
    print(f"\nmoons tutorial: {args.batch} training moons, {args.epochs} epochs, {SOLVER} atol=rtol={ATOL}, "
          f"adjoint atol=rtol={ATOL_ADJOINT}, seminorm {args.seminorm}, device {device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}; ratios are wall time over the named "
          "variant's")
    print_training(train_table)
    report = {
        "job": {"epochs": args.epochs, "repeats": args.repeats, "warmup_epochs": args.warmup_epochs,
                "solver": SOLVER, "atol": ATOL, "rtol": RTOL, "atol_adjoint": ATOL_ADJOINT,
                "rtol_adjoint": RTOL_ADJOINT, "seminorm": args.seminorm, "n_train": args.batch, "n_test": N_TEST,
                "noise": NOISE, "lr": LR, "t_span": t_span.tolist()},
        "training": train_table,
        "solve": None,  # written once measured: a run cut off in the solves keeps its training table
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                        "processor": cpu_model(), "machine": platform.machine(),
                        "platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), "versions": library_versions(),
                        "nodecore_path": os.path.dirname(nodecore.__file__),
                        "nodecore_backends": list(nodecore.BACKENDS)},
    }
    write_json(args.json, report)

    trained = runs.get(SOLVE_FIELD_FROM, next(iter(runs.values())))[0].trained
    solve_net = copy.deepcopy(init if args.solve_field == "initial" else trained).to(device)
    solvers = [v for v in variants if v.sensitivity == "autograd"]
    samples: dict[str, list[tuple[float, float, float]]] = {v.name: [] for v in solvers}
    for _ in range(args.solve_repeats):
        for variant in solvers:
            seconds, nfe = time_solve(variant, solve_net, data[0], t_span, device)
            samples[variant.name].append((seconds, nfe, time_bare_loop(solve_net, data[0], int(nfe), device)))
    solve_table = solve_rows(samples)
    print(f"\nno-grad {SOLVER} solve of the {args.solve_field} field on a {tuple(data[0].shape)} state, "
          f"median of {args.solve_repeats}")
    print_solve(solve_table)
    report["solve"] = {"field": args.solve_field, "state_shape": list(data[0].shape),
                       "repeats": args.solve_repeats, "results": solve_table}
    write_json(args.json, report)


def write_json(path: str | None, report: dict) -> None:
    """Write ``report`` to ``path`` (when given), replacing what an earlier call wrote."""
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
