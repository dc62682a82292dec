"""Devices: parse a torch device name and refuse, in one line, one this machine cannot run on."""

from __future__ import annotations

import torch

from padim.errors import InputError, PadimEnvironmentError


def parse_device(device: str | torch.device) -> torch.device:
    """A torch.device, or InputError in one line for a name torch does not know."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}: use e.g. 'cpu' or 'cuda'") from None


def check_device(device: str | torch.device) -> None:
    """Refuse a device this machine cannot run on, in one line (before any image is read)."""
    dev = parse_device(device)
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PadimEnvironmentError(f"device {str(device)!r}: no CUDA GPU is available to torch here: use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise PadimEnvironmentError(f"device {str(device)!r}: only {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1})")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise PadimEnvironmentError(f"device {str(device)!r}: Apple MPS is not available here: use --device cpu")
        return
    raise InputError(f"device {str(device)!r} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
