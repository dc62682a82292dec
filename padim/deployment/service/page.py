"""The service's web page: page.html with its page.css and page.js inlined, one self-contained document."""

from __future__ import annotations

import html
from typing import Any

from padim.utils.templates import read_template, render

TEMPLATES = "padim.deployment.service"
VERDICT_COLOURS = {"defect": "#c62828", "ok": "#2e7d32", "score": "#1565c0"}  # the verdict banner in page.css
PAGE_HEADERS = {  # inline style and script only, nothing fetched but this server's own API
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}


def about_text(info: dict[str, Any]) -> str:
    """The line under the title: the model, its input and whether it is calibrated."""
    size = "x".join(map(str, info["crop_size"] or info["image_size"]))
    cal = ("calibrated: " + info["threshold_source"]) if info["calibrated"] else "not calibrated: scores only, no verdict"
    return (f"{info['model']}, {info['n_features']} features, input {size}, "
            f"fitted on {info['n_samples_seen']} images; {cal}")


def render_page(info: dict[str, Any]) -> str:
    """The web page for a model described by `info` (the /health fields): no external resources."""
    crop_note = "; dark frame = outside the model's centre crop, not inspected" if info["crop_size"] else ""
    return render(TEMPLATES, "page.html", css=read_template(TEMPLATES, "page.css"),
                  script=read_template(TEMPLATES, "page.js"), about=html.escape(about_text(info)),
                  crop_note=html.escape(crop_note))
