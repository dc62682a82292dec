"""numpy's BLAS against torch's for the small products (padim.utils.blas), alternating in one process.

    python benchmarks/blas.py                     # Lite0-sized products, 7 alternations each
    python benchmarks/blas.py --dim 100           # R18-Rd100's d

Prints, per PADIM_BLAS choice, the median time of: the Mahalanobis distances of one batch (3136
positions, batch 1, 4, 8 and 32, centring included), and one statistics update (3136 positions, as many
embeddings as the fit's float32 block holds: 121 at d=176, 38 at d=550; float64 row blocks), and the
factorisation of those statistics (padim.gaussian.precision_factor: Cholesky and inverse factor of
every position's covariance). Random data of the real shapes: speed does not depend on the values.
Each figure alternates numpy and torch runs in this one process, so a noisy machine affects both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from padim import paper, staircase
from padim.gaussian import BatchBuffer, GaussianStats, precision_factor
from padim.scoring import patch_distances, split_mean
from padim.utils.blas import CHOICES, ENV_VAR

POSITIONS = 3136  # a 224 px input at stride 4


def alternate(run: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each run, the runs alternating (one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in run}
    for k, fn in run.items():
        os.environ[ENV_VAR] = k
        fn()
    for _ in range(repeat):
        for k, fn in run.items():
            os.environ[ENV_VAR] = k
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=176, help="embedding size d (Lite0: 176, R18-Rd100: 100)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=None,
                        help="embeddings per statistics update (default: what the fit's 256 MB block holds)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    d = args.dim
    upper = torch.randn(POSITIONS, d, d, generator=gen).triu_().mul_(0.1)
    stairs = staircase.from_upper(upper)
    del upper
    hi, lo = split_mean(torch.randn(POSITIONS, d, generator=gen, dtype=torch.float64))
    print(f"d = {d}, {POSITIONS} positions, {torch.get_num_threads()} threads; median of {args.repeat}, alternating")
    print("| products | " + " | ".join(f"{c} ms" for c in CHOICES) + " | torch / numpy |")
    print("|---|" + "---|" * (len(CHOICES) + 1))
    for b in (1, 4, 8, 32):
        x = torch.randn(POSITIONS, b, d, generator=gen)
        med = alternate({c: (lambda: patch_distances(x.clone(), stairs, hi, lo)) for c in CHOICES}, args.repeat)
        print(f"| distances, batch {b} | " + " | ".join(f"{1e3 * med[c]:.1f}" for c in CHOICES)
              + f" | {med['torch'] / med['numpy']:.2f} |")
    rows = args.rows or BatchBuffer(GaussianStats.empty(1, d)).capacity // POSITIONS  # its block, per position
    emb = torch.randn(POSITIONS, rows, d, generator=gen)

    updated = GaussianStats.empty(POSITIONS, d)
    updated.update(emb)  # allocated and touched once, as in a fit: the timings hold no page faults

    def update() -> None:
        updated.update(emb)

    med = alternate({c: update for c in CHOICES}, max(3, args.repeat // 2))
    print(f"| statistics update, {rows} embeddings | " + " | ".join(f"{1e3 * med[c]:.0f}" for c in CHOICES)
          + f" | {med['torch'] / med['numpy']:.2f} |")
    med = alternate({c: (lambda: precision_factor(updated, paper.EPSILON)) for c in CHOICES}, max(3, args.repeat // 2))
    print(f"| factorisation, {rows} embeddings | " + " | ".join(f"{1e3 * med[c]:.0f}" for c in CHOICES)
          + f" | {med['torch'] / med['numpy']:.2f} |")


if __name__ == "__main__":
    main()
