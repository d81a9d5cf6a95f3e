"""Sphinx configuration of the grove-caches documentation.

Build it with ``scripts/docs [OUTDIR]``: warnings are errors and every cross-reference
into the package must resolve (``-W -n --keep-going``).
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

from sphinx.application import Sphinx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # benchmarks.plot draws the performance figures

project = "grove-caches"
author = "the grove-caches authors"
copyright = "the grove-caches authors"
release = _version("grove-caches")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "myst_parser",
    "grove_configuration",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# _generated holds what the build draws (the benchmark figures and their captions).
exclude_patterns = ["_build", "_generated"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

smartquotes_action = "qe"  # keep "--debug" as typed: no en dashes in command lines

html_theme = "furo"
html_title = f"grove-caches {release}"
html_static_path = ["_static"]
html_css_files = ["grove.css"]

# The API reference documents what each module exports, in source order, with the
# signature's types shown in the description.
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
# Types for the parameters a docstring documents (pydantic-settings' own constructor
# options stay out of the settings models' pages).
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = True
autoclass_content = "class"

# Nitpicky mode: every reference to this package must resolve. References to Python's
# standard library and to third-party packages are not linked (the build must work
# without network, so there is no intersphinx inventory to resolve them against).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:(class|exc|obj|data|func|meth|attr|mod)", r"(?!grove\b).*"),
]


def _draw_benchmark_figures(app: object) -> None:
    """Draw the performance figures from the committed results file, before reading."""
    from benchmarks.plot import DEFAULT_RESULTS, draw  # noqa: PLC0415 - needs sys.path

    draw(DEFAULT_RESULTS, HERE / "_generated")


def setup(app: Sphinx) -> None:
    """Draw the benchmark figures when the build starts.

    :param app: The Sphinx application.
    """
    app.connect("builder-inited", _draw_benchmark_figures)
