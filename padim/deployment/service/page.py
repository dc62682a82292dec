"""The service's web page: padim_runtime's page for one model at this server's root, style and script inlined."""

from __future__ import annotations

from typing import Any

from padim_runtime.page import VERDICT_COLOURS, render_page as render_models_page

__all__ = ["VERDICT_COLOURS", "render_page"]


def render_page(info: dict[str, Any]) -> str:
    """The web page for a model described by `info` (the /health fields): one self-contained document."""
    return render_models_page({info["model"]: info}, at_root=True, drift=False, inline=True)
