"""The service's limits: what requests may use, one by one and all together, and the table that checks them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any

from padim_runtime.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS

from padim.images import DEFAULT_MAX_PIXELS
from padim.deployment.service.uploads import DEFAULT_MAX_UPLOAD, MAX_OVERLAY_SIDE
from padim.utils.constraints import Rule, check_value, real

DEFAULT_MAX_QUEUE = 64
DEFAULT_BODY_TIMEOUT_S = 30.0  # a whole upload must arrive within this (20 MiB needs ~6 Mbit/s)
DEFAULT_MAX_UPLOADS_PER_CLIENT = 8  # bodies being received at once from one client address


def _at_least(low: int) -> Rule:
    """An integer (not a bool) >= low."""
    return Rule(lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= low, f"an integer >= {low}")


# What each limit may be (checked by create_app before anything starts).
LIMIT_CONSTRAINTS: dict[str, list[Rule]] = {
    "max_upload_bytes": [_at_least(1)],
    "max_pixels": [_at_least(1)],
    "max_batch": [_at_least(1)],
    "max_wait_ms": [real(0.0, math.inf, high_open=True)],
    "max_queue": [_at_least(1)],
    "decode_workers": [_at_least(1)],
    "max_overlay_side": [_at_least(16)],
    "body_timeout_s": [real(0.0, math.inf, low_open=True, high_open=True)],
    "max_uploads_per_client": [_at_least(1)],
}


@dataclass(frozen=True)
class Limits:
    """What requests may use, one by one and all together (see padim.deployment.service).

    Attributes
    ----------
    max_upload_bytes : int
        Largest upload read (413 past it).
    max_pixels : int
        Largest image decoded, from its header (413 past it).
    max_batch : int
        Most requests scored in one forward pass.
    max_wait_ms : float
        How long a batch waits for more requests after its first.
    max_queue : int
        Most requests in flight; the next one gets 503.
    decode_workers : int
        Images decoded at the same time.
    max_overlay_side : int
        Longest side of an overlay, in pixels.
    body_timeout_s : float
        Time allowed for a whole upload to arrive (408 past it).
    max_uploads_per_client : int
        Bodies received at once from one client address (429 past it).
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    decode_workers: int = 2
    max_overlay_side: int = MAX_OVERLAY_SIDE
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_uploads_per_client: int = DEFAULT_MAX_UPLOADS_PER_CLIENT

    def check(self) -> None:
        """Refuse a limit LIMIT_CONSTRAINTS does not accept, in one line naming it."""
        for name, rules in LIMIT_CONSTRAINTS.items():
            check_value(name, getattr(self, name), rules)

    def published(self) -> dict[str, Any]:
        """The limits /health reports."""
        hidden = ("decode_workers", "max_overlay_side")
        return {k: v for k, v in asdict(self).items() if k not in hidden}
