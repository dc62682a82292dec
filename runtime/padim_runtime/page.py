"""The service's page: HTML, CSS and JavaScript from the package's templates folder, the bundles filled in."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def template(name: str) -> str:
    """A file of the package's templates folder."""
    return resources.files("padim_runtime").joinpath("templates", name).read_text(encoding="utf-8")


def about(info: dict[str, Any]) -> str:
    """A bundle in one line (what `padim serve`'s page says of its model)."""
    size = "x".join(map(str, info["crop_size"] or info["image_size"]))
    cal = f"calibrated: {info['threshold_source']}" if info["calibrated"] else "not calibrated: scores only, no verdict"
    return (f"{info['model']}, {info['n_features']} features, input {size}, fitted on {info['n_samples_seen']} "
            f"images; {cal}")


def render_page(infos: dict[str, dict[str, Any]], default: str | None) -> str:
    """page.html with the bundles' descriptions and the model selector filled in (hidden for one bundle)."""
    first = default or next(iter(infos))
    options = "".join(f'<option value="{html.escape(n)}"{" selected" if n == first else ""}>{html.escape(n)}</option>'
                      for n in infos)
    fill = {"OPTIONS": options, "SELECTOR_HIDDEN": " hidden" if len(infos) == 1 else "",
            "ABOUT_TEXT": html.escape(about(infos[first])),
            "ABOUT": html.escape(json.dumps({n: about(i) for n, i in infos.items()})),
            "CROP": html.escape(json.dumps({n: bool(i["crop_size"]) for n, i in infos.items()}))}
    page = template("page.html")
    for key, value in fill.items():
        page = page.replace("{{" + key + "}}", value)
    return page
