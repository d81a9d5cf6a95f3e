"""Sphinx directives that document handlers from the code: settings and abilities.

``.. grove-configuration:: grove.caches.local_file.Configuration`` renders one row per
field of the model: its name, type, default, constraints, the environment variable that
sets it (from the model's ``env_prefix``) and its description (the field's
``description``, else the docstring written under it). Nothing is copied by
hand, so the table cannot drift from the code.

``.. grove-handlers::`` renders one row per installed handler (the ``grove.caches``
entry-point group) with the abilities its class declares: expiry and whose clock decides
it, listing, whether ``grove-cache init`` creates its storage, the largest value.

It also keeps pydantic's own machinery (``model_config``, ``model_fields``...) out of
autodoc's output for these models: the table says what a reader needs.
"""

from __future__ import annotations

import enum
import importlib
import re
import types
import typing
from importlib.metadata import entry_points
from typing import Any

import annotated_types
import pydantic
from docutils import nodes
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

from grove.caches import ENTRY_POINT_GROUP, BaseCache

_CONSTRAINTS = (
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.MinLen, "min_length", "at least {} characters"),
    (annotated_types.MaxLen, "max_length", "at most {} characters"),
)


def import_object(dotted: str) -> Any:
    """Import ``package.module.Name``.

    :param dotted: The object's full dotted name.
    :raises ImportError: No module of that name has the object.
    :return: The object.
    """
    module_name, _, attribute = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise ImportError(f"{module_name} has no {attribute}") from exc


def describe_type(annotation: Any) -> str:
    """Write a field's type as a reader would, such as ``str | None`` or ``"full" | "normal"``.

    :param annotation: The field's annotation, as pydantic resolved it.
    :return: The type in one short line.
    """
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{value}"' for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(argument) for argument in typing.get_args(annotation))
    if annotation is pydantic.SecretStr:
        return "str (secret)"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_default(field: FieldInfo) -> str:
    """Write a field's default as it would be given in the environment.

    :param field: The pydantic field.
    :return: The default, ``required`` when there is none.
    """
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            return "(computed)"
        return "required"
    default = field.default
    if isinstance(default, pydantic.SecretStr):
        default = default.get_secret_value()
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, enum.Enum):
        default = default.value
    if default == "":
        return "empty"
    return str(default)


def describe_constraints(field: FieldInfo) -> str:
    """List a field's bounds, such as ``≥ 900, ≤ 43200``.

    :param field: The pydantic field.
    :return: The bounds, comma-separated; empty when there are none.
    """
    found = []
    for item in field.metadata:
        for kind, attribute, template in _CONSTRAINTS:
            if isinstance(item, kind):
                bound = getattr(item, attribute)
                not_empty = kind is annotated_types.MinLen and bound == 1
                found.append("not empty" if not_empty else template.format(bound))
    return ", ".join(found)


def _literal(text: str) -> str:
    """Quote text as an inline literal of reStructuredText."""
    return f"``{text}``" if text else ""


def attribute_docstrings(model: type) -> dict[str, str]:
    """Read the docstrings written under a class's fields (``field: int`` then a string).

    :param model: The class.
    :return: Each documented attribute's docstring, joined into one line.
    """
    try:
        found = ModuleAnalyzer.for_module(model.__module__).find_attr_docs()
    except PycodeError:
        return {}
    return {
        attribute: " ".join(line.strip() for line in lines if line.strip())
        for (scope, attribute), lines in found.items()
        if scope == model.__qualname__
    }


def configuration_rows(
    model: type[pydantic.BaseModel], notes: dict[str, str] | None = None
) -> list[list[str]]:
    """Build the table's rows for a settings model.

    :param model: A ``HandlerConfiguration`` subclass (or any pydantic-settings model).
    :param notes: More to say about some fields, by field name, after their description.
    :raises KeyError: A note names no field of the model.
    :return: One row per field: name and type (two lines), default, environment
        variable, meaning.
    """
    notes = notes or {}
    unknown = sorted(set(notes) - set(model.model_fields))
    if unknown:
        raise KeyError(f"notes for fields that {model.__name__} does not have: {unknown}")
    prefix = str(model.model_config.get("env_prefix", ""))
    documented = attribute_docstrings(model)
    rows = []
    for name, field in model.model_fields.items():
        default = describe_default(field)
        constraints = describe_constraints(field)
        meaning = (field.description or documented.get(name, "")).strip()
        if name in notes:
            meaning = f"{meaning} {notes[name]}".strip()
        if constraints:
            meaning = f"{meaning} ({constraints})" if meaning else constraints
        rows.append(
            [
                f"{_literal(name)}\n{_literal(describe_type(field.annotation))}",
                default if default in {"required", "unset", "empty"} else _literal(default),
                _literal((prefix + name).upper()),
                meaning,
            ]
        )
    return rows


_INLINE = re.compile(r":mod:`(?P<module>[^`]+)`|``(?P<double>.+?)``|`(?P<single>[^`]+)`")


def inline_nodes(text: str) -> list[nodes.Node]:
    """Turn a cell's text into nodes: ``code`` or `code` as literals, :mod:`x` as a link.

    The same in reStructuredText and Markdown pages, since no parser is involved.

    :param text: The cell's text.
    :return: Its nodes.
    """
    found: list[nodes.Node] = []
    position = 0
    for match in _INLINE.finditer(text):
        if match.start() > position:
            found.append(nodes.Text(text[position : match.start()]))
        if match["module"]:
            reference = addnodes.pending_xref(
                "", refdomain="py", reftype="mod", reftarget=match["module"], refexplicit=False
            )
            reference += nodes.literal(match["module"], match["module"])
            found.append(reference)
        else:
            code = match["double"] or match["single"]
            found.append(nodes.literal(code, code))
        position = match.end()
    if position < len(text):
        found.append(nodes.Text(text[position:]))
    return found


def table_node(headers: list[str], rows: list[list[str]], widths: list[int]) -> nodes.table:
    """Build a table whose cells are rendered by :func:`inline_nodes`.

    :param headers: The column titles.
    :param rows: The cells, row by row.
    :param widths: Relative column widths.
    :return: The table node.
    """
    table = nodes.table(classes=["grove-generated", "colwidths-given"], width="100%")
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)

    def row_node(cells: list[str]) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            for text in cell.split("\n"):  # a line break starts a paragraph
                paragraph = nodes.paragraph()
                paragraph.extend(inline_nodes(text))
                entry += paragraph
            row += entry
        return row

    head = nodes.thead()
    head += row_node(headers)
    body = nodes.tbody()
    body.extend(row_node(cells) for cells in rows)
    group += head
    group += body
    return table


def parse_notes(lines: list[str]) -> dict[str, str]:
    """Read the directive's content: ``field: text``, continued on indented lines.

    :param lines: The content lines.
    :raises ValueError: A line neither starts a note nor continues one.
    :return: The text of each note, by field name, on one line.
    """
    notes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if not line.strip():
            continue
        if line[0].isspace():
            if current is None:
                raise ValueError(f"a continuation line before any note: {line!r}")
            current.append(line.strip())
            continue
        field, colon, text = line.partition(":")
        if not colon or not field.isidentifier():
            raise ValueError(f"not 'field: text': {line!r}")
        current = notes.setdefault(field, [])
        current.append(text.strip())
    return {field: " ".join(parts) for field, parts in notes.items()}


class ConfigurationDirective(SphinxDirective):
    """``.. grove-configuration:: dotted.name.of.Configuration``.

    The content, if any, adds notes to fields, as ``field: text`` (continued on indented
    lines); a note for a field the model does not have fails the build.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        """Render the table.

        :return: The table's nodes.
        """
        dotted = self.arguments[0]
        try:
            model = import_object(dotted)
        except ImportError as exc:
            raise self.error(f"grove-configuration: cannot import {dotted}: {exc}") from exc
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise self.error(f"grove-configuration: {dotted} is not a pydantic model")
        try:
            rows = configuration_rows(model, parse_notes(list(self.content)))
        except (KeyError, ValueError) as exc:
            raise self.error(f"grove-configuration {dotted}: {exc}") from exc
        headers = ["setting\ntype", "default", "environment variable", "meaning"]
        return [table_node(headers, rows, [20, 13, 27, 40])]


def _size(limit: int | None) -> str:
    if limit is None:
        return "no limit of its own"
    if limit % (1 << 20) == 0:
        return f"{limit >> 20} MiB"
    return f"{limit:,} bytes"


def handler_rows() -> list[list[str]]:
    """Build one row per installed handler from what its class declares.

    :return: Name, module, expiry, listing, creates its storage, largest value.
    """
    rows = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name):
        handler = entry.load()
        expiry = "no"
        if handler.supports_expiry():
            owner = getattr(handler, "clock_owner", None)
            expiry = f"yes, by the {owner}'s clock" if owner else "yes"
        creates = handler.create_storage is not BaseCache.create_storage
        rows.append(
            [
                _literal(entry.name),
                f":mod:`{handler.__module__}`",
                expiry,
                "yes" if handler.supports_listing() else "no",
                "yes" if creates else "nothing to create",
                _size(handler.max_value_bytes),
            ]
        )
    return rows


class HandlersDirective(SphinxDirective):
    """``.. grove-handlers::``: the installed handlers and their declared abilities."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Render the table.

        :return: The table's nodes.
        """
        headers = ["handler", "module", "expiry (`ttl`)", "listing", "`grove-cache init`"]
        headers.append("largest value")
        return [table_node(headers, handler_rows(), [14, 24, 20, 8, 16, 18])]


_PYDANTIC_INTERNALS = frozenset({"model_config", "model_fields", "model_computed_fields"})


def skip_pydantic_internals(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    """Keep pydantic's own attributes out of autodoc's output.

    :return: ``True`` to skip the member, ``None`` to let autodoc decide.
    """
    if name in _PYDANTIC_INTERNALS:
        return True
    if getattr(obj, "__qualname__", "").startswith(("BaseModel.", "BaseSettings.")):
        return True
    return None


def settings_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    """Show a settings model's signature as its fields, not pydantic-settings' own options.

    :return: ``(*, field, field=default, ...)`` for a pydantic model, ``None`` otherwise.
    """
    if what != "class" or not (isinstance(obj, type) and issubclass(obj, pydantic.BaseModel)):
        return None
    parameters = []
    for field_name, field in obj.model_fields.items():
        if field.default is PydanticUndefined and field.default_factory is None:
            parameters.append(field_name)
        else:
            default = field.default
            if isinstance(default, pydantic.SecretStr):
                default = default.get_secret_value()
            parameters.append(f"{field_name}={default!r}")
    return f"(*, {', '.join(parameters)})", return_annotation


def setup(app: Sphinx) -> dict[str, object]:
    """Register the directive and the autodoc filter.

    :param app: The Sphinx application.
    :return: The extension's metadata.
    """
    app.add_directive("grove-configuration", ConfigurationDirective)
    app.add_directive("grove-handlers", HandlersDirective)
    app.connect("autodoc-skip-member", skip_pydantic_internals)
    app.connect("autodoc-process-signature", settings_signature)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
