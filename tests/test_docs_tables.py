"""The documentation's generated tables say what the code says (docs/_ext).

The settings tables and the handler table are drawn from the code at build time; these
tests check the drawing itself, so that "generated, never hand-copied" holds.
"""

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed")
sys.path.insert(0, str(Path(__file__).parent.parent / "docs" / "_ext"))

import grove_configuration as ext

from grove.caches import aws_dynamodb, local_file, names, postgresql
from grove.caches.configuration import HandlerConfiguration

CONFIGURED = ["local_file", "local_sqlite", "aws_dynamodb", "redis", "postgresql"]


@pytest.mark.parametrize("handler", CONFIGURED)
def test_every_field_has_a_row_with_its_variable(handler: str) -> None:
    model = importlib.import_module(f"grove.caches.{handler}").Configuration
    assert issubclass(model, HandlerConfiguration)
    rows = ext.configuration_rows(model)
    assert [row[0].split("\n")[0] for row in rows] == [f"``{name}``" for name in model.model_fields]
    assert [row[2] for row in rows] == [
        f"``{model.env_name(name)}``" for name in model.model_fields
    ]
    assert all(row[3] for row in rows), "every setting says what it means"


def test_defaults_types_and_bounds_come_from_the_fields() -> None:
    path, fsync = ext.configuration_rows(local_file.Configuration)
    assert (path[1], fsync[1]) == ("required", "``true``")
    assert path[0] == "``path``\n``str``"
    duration = ext.configuration_rows(aws_dynamodb.Configuration)[4]
    assert duration[1] == "``3600``" and duration[3].endswith("(≥ 900, ≤ 43200)")
    dsn = ext.configuration_rows(postgresql.Configuration)[0]
    assert dsn[0] == "``dsn``\n``str (secret)``" and dsn[1] == "empty"


def test_notes_join_their_field_and_a_note_for_no_field_is_refused() -> None:
    notes = ext.parse_notes(["fsync: `false` is faster", "  and still atomic."])
    assert notes == {"fsync": "`false` is faster and still atomic."}
    fsync = ext.configuration_rows(local_file.Configuration, notes)[1]
    assert fsync[3].endswith("`false` is faster and still atomic.")
    with pytest.raises(KeyError, match="fsynk"):
        ext.configuration_rows(local_file.Configuration, {"fsynk": "typo"})
    with pytest.raises(ValueError, match="not 'field: text'"):
        ext.parse_notes(["no colon here"])


def test_the_handler_table_lists_every_installed_handler_and_its_abilities() -> None:
    rows = {row[0]: row for row in ext.handler_rows()}
    assert sorted(rows) == [f"``{name}``" for name in names()]
    assert rows["``redis``"][2] == "yes, by the server's clock"
    assert rows["``local_memory``"][4] == "nothing to create"
    assert rows["``aws_dynamodb``"][5] == "16 MiB"
