"""The `padim` command: a thin layer over the Python API.

``parser`` builds the arguments, ``commands`` holds one function per sub-command, each calling the library
function that writes its output; ``main`` here turns every failure into one line and an exit status.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from typing import Any

from padim.cli.commands import COMMANDS
from padim.cli.parser import EXIT_BAD_INPUT, build_parser
from padim.errors import PadimError

EXIT_INTERNAL = 1  # an unexpected exception: probably a bug (PADIM_DEBUG=1 shows its traceback)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a Unix tool's reader sees when it stops reading early
DEBUG_ENV = "PADIM_DEBUG"
__all__ = ["EXIT_BAD_INPUT", "EXIT_BROKEN_PIPE", "EXIT_INTERNAL", "build_parser", "describe_failure", "main"]


def _allow_pixels(max_pixels: int) -> None:
    """Let Pillow's own decompression-bomb limit (this process's) admit what --max-pixels admits."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _one_line_warning(message: Any, category: Any, *_args: Any, **_kwargs: Any) -> None:
    """Warnings as one line on stderr, without source lines."""
    print(f"padim: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is one line on stderr; exit 2 for bad input or environment, 1 for a bug.

    PADIM_DEBUG=1 in the environment lets any exception propagate with its traceback.
    """
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    if getattr(args, "max_pixels", None):
        _allow_pixels(args.max_pixels)
    try:
        COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, never a traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message, code = describe_failure(exc)
        print(f"padim: error: {message}", file=sys.stderr)
        return code
    return 0


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """One line for an exception that reached the CLI, and the exit code it gets."""
    from PIL import Image

    text = _first_line(exc)
    if isinstance(exc, PadimError):
        return text, EXIT_BAD_INPUT
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _is_out_of_memory(text)):
        return (f"out of memory ({text if isinstance(exc, RuntimeError) else 'MemoryError'}): "
                f"use a smaller --batch-size, --image-size or --n-features"), EXIT_BAD_INPUT
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely: {text}", EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or text}", EXIT_BAD_INPUT
    if isinstance(exc, (RuntimeError, AssertionError)) and _is_device_error(text):
        return f"device error ({text}): check --device, or use --device cpu", EXIT_BAD_INPUT
    return (f"unexpected {type(exc).__name__}: {text} (probably a bug: rerun with {DEBUG_ENV}=1 for the traceback "
            f"and report it)"), EXIT_INTERNAL


def _first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, shortened, or its type's name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_out_of_memory(text: str) -> bool:
    """torch's CPU and GPU allocation failures."""
    lowered = text.lower()
    return "out of memory" in lowered or "can't allocate memory" in lowered or "not enough memory" in lowered


def _is_device_error(text: str) -> bool:
    """An accelerator or driver failure (CUDA, MPS, a torch built without them)."""
    lowered = text.lower()
    return any(word in lowered for word in ("cuda", "cudnn", "cublas", "mps", "nvidia", "hip", "device-side"))


def _silence_stdout() -> None:
    """After a reader closed our pipe: send what is left to /dev/null, so that exit prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
