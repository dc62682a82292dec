"""HTML, CSS and JavaScript kept in package data files, filled in through ``{{name}}`` placeholders.

A template is a file in a package's ``templates/`` folder. ``fill`` puts each value in verbatim: the
caller encodes it for where it goes (``html.escape`` for text and attributes). A file may hold several
named fragments, each introduced by a line ``<!-- part: NAME -->`` (see ``template_parts``).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

PLACEHOLDER = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
PART_MARKER = re.compile(r"^<!-- part: ([a-z_][a-z0-9_]*) -->\n", re.MULTILINE)


@functools.cache
def read_template(package: str, name: str) -> str:
    """The text of `templates/<name>` shipped in `package` (read once, through importlib.resources)."""
    return resources.files(package).joinpath("templates", name).read_text(encoding="utf-8")


def fill(template: str, /, **values: object) -> str:
    """The template with every ``{{name}}`` replaced by ``str(values[name])``; every value must be used."""
    wanted = set(PLACEHOLDER.findall(template))
    if wanted != set(values):
        raise KeyError(f"template placeholders {sorted(wanted)} do not match the values {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


def render(package: str, name: str, /, **values: object) -> str:
    """`fill` of the template file `name` in `package`."""
    return fill(read_template(package, name), **values)


@functools.cache
def template_parts(package: str, name: str) -> dict[str, str]:
    """The named fragments of one template file, without their marker lines and trailing newline."""
    pieces = PART_MARKER.split(read_template(package, name))
    return {pieces[i]: pieces[i + 1].rstrip("\n") for i in range(1, len(pieces), 2)}
