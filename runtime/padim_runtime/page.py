"""The services' page: HTML, CSS and JavaScript from the package's templates folder, the models filled in."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any
from urllib.parse import quote

PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
VERDICT_COLOURS = {"defect": "#c62828", "ok": "#2e7d32", "score": "#1565c0"}  # the verdict banner in page.css
CROP_NOTE = "; dark frame = outside the model's centre crop, not inspected"


def template(name: str) -> str:
    """A file of the package's templates folder."""
    return resources.files("padim_runtime").joinpath("templates", name).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, str]) -> str:
    """`text` with every ``{{name}}`` replaced by ``values[name]``; every value must be used."""
    wanted = set(PLACEHOLDER.findall(text))
    if wanted != set(values):
        raise KeyError(f"template placeholders {sorted(wanted)} do not match the values {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def page_headers(inline: bool) -> dict[str, str]:
    """The page's headers: its style and script inline or from /assets, nothing fetched but this server's API."""
    source = "'unsafe-inline'" if inline else "'self'"
    return {"Content-Security-Policy": f"default-src 'none'; script-src {source}; style-src {source}; "
                                       "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            "X-Content-Type-Options": "nosniff"}


def about(info: dict[str, Any]) -> str:
    """A model in one line: what it is, its input and whether it is calibrated."""
    size = "x".join(map(str, info["crop_size"] or info["image_size"]))
    cal = f"calibrated: {info['threshold_source']}" if info["calibrated"] else "not calibrated: scores only, no verdict"
    return (f"{info['model']}, {info['n_features']} features, input {size}, fitted on {info['n_samples_seen']} "
            f"images; {cal}")


def _assets(inline: bool) -> tuple[str, str]:
    """The style and script elements: the files themselves, or links to /assets."""
    if inline:
        return f"<style>\n{template('page.css')}</style>", f"<script>\n{template('page.js')}</script>"
    return '<link rel="stylesheet" href="assets/page.css">', '<script src="assets/page.js"></script>'


def render_page(infos: dict[str, dict[str, Any]], default: str | None = None, *, at_root: bool = False,
                drift: bool = True, inline: bool = False) -> str:
    """page.html for the models `infos` describes (name -> the /health fields).

    The model selector shows for several models; `at_root`: one model at the server's root routes (/predict)
    rather than /models/NAME/; `drift`: the drift panel; `inline`: style and script in the page itself.
    """
    first = default or next(iter(infos))
    models = {n: {"about": about(i), "crop_note": CROP_NOTE if i["crop_size"] else "",
                  "route": "" if at_root else f"models/{quote(n, safe='')}/"} for n, i in infos.items()}
    options = "".join(f'<option value="{html.escape(n)}"{" selected" if n == first else ""}>{html.escape(n)}</option>'
                      for n in infos)
    style, script = _assets(inline)
    return fill(template("page.html"), {
        "style": style, "script": script, "models": html.escape(json.dumps(models)), "options": options,
        "selector_hidden": " hidden" if len(infos) == 1 else "", "drift_hidden": "" if drift else " hidden",
        "about": html.escape(models[first]["about"]), "crop_note": html.escape(models[first]["crop_note"])})
