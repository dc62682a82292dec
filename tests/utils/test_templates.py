"""Package data templates: placeholders filled exactly, named parts split, every template of the library shipped."""

from __future__ import annotations

import pytest

from padim.utils.templates import PLACEHOLDER, fill, read_template, template_parts

SHIPPED = [("padim.reporting", "report.html"), ("padim.reporting", "report.css"), ("padim.reporting", "parts.html"),
           ("padim_runtime", "page.html"), ("padim_runtime", "page.css"),
           ("padim_runtime", "page.js")]


def test_fill_replaces_every_placeholder_and_only_those() -> None:
    assert fill("<b>{{name}}</b> {a{b}} {{ n }}", name="x & y") == "<b>x & y</b> {a{b}} {{ n }}"
    assert fill("{{a}}{{a}}-{{b}}", a=1, b="") == "11-"


@pytest.mark.parametrize("values", [{}, {"name": 1, "extra": 2}])
def test_a_missing_or_unused_value_is_refused(values: dict) -> None:
    with pytest.raises(KeyError, match="placeholders"):
        fill("{{name}}", **values)


def test_parts_are_split_at_their_marker_lines() -> None:
    parts = template_parts("padim.reporting", "parts.html")
    assert parts["verdict"] == '<span class="verdict {{kind}}">{{text}}</span>'
    assert parts["wrong"].startswith(" &middot; ")  # leading space kept, trailing newline dropped
    assert not any("<!-- part:" in text for text in parts.values())


@pytest.mark.parametrize("package, name", SHIPPED)
def test_the_library_templates_are_package_data(package: str, name: str) -> None:
    text = read_template(package, name)
    assert text.strip()
    if name.endswith((".css", ".js")):  # inlined as they are: no placeholders of their own
        assert not PLACEHOLDER.search(text)
