"""Whose BLAS forms the many small batched matrix products on the CPU: numpy's or torch's.

Scoring (thousands of B x k by k x 48 products a batch) and the statistics' update (thousands of
(k, B) by (B, r) float64 products) are small products per position. numpy's stacked matmul (OpenBLAS
in its wheels) ran them 1.4-2.3x faster than torch.bmm/baddbmm (MKL) on a 2-core AMD EPYC with
AVX-512 (benchmarks/blas.py); both agree to rounding, and tests check each against float64. Where torch's
were as fast, callers keep them (padim.scoring.NUMPY_MIN_BATCH, padim.gaussian.GRAM_NUMPY_MAX_DIM).
The fit's factorisation (padim.gaussian.precision_factor) follows the same choice: numpy's stacked
Cholesky and products, against torch's cholesky_ex + solve_triangular.
"""

from __future__ import annotations

import os

import torch

from padim.errors import InputError

ENV_VAR = "PADIM_BLAS"
CHOICES = ("numpy", "torch")


def blas() -> str:
    """"numpy" (the default) or "torch", as PADIM_BLAS says."""
    choice = os.environ.get(ENV_VAR, "").strip().lower() or "numpy"
    if choice not in CHOICES:
        raise InputError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def numpy_products(*tensors: torch.Tensor | None, dtype: torch.dtype) -> bool:
    """Whether products of these tensors go through numpy: blas() says so and all are CPU tensors of dtype,
    outside autograd and tracing (None entries are skipped)."""
    present = [t for t in tensors if t is not None]
    return (blas() == "numpy" and not torch.jit.is_tracing()
            and all(t.device.type == "cpu" and t.dtype == dtype and not t.requires_grad for t in present))
