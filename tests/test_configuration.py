"""Handler settings: unknown names, where a bad value came from, '~', the handler variable."""

import traceback
from pathlib import Path

import pydantic
import pytest

from grove.caches import configuration, create, load, local_file, local_sqlite
from grove.exceptions import ConfigurationException


def test_an_unknown_setting_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationException) as caught:
        create("local_file", settings={"path": str(tmp_path), "fsynk": False})
    assert str(caught.value) == "unknown setting 'fsynk' for local_file; known: path, fsync"
    with pytest.raises(ConfigurationException, match="unknown setting 'pth' for local_sqlite"):
        load("local_sqlite", settings={"pth": str(tmp_path / "c.db")})
    with pytest.raises(pydantic.ValidationError, match="fsynk"):
        local_file.Configuration(path=str(tmp_path), fsynk=False)  # type: ignore[call-arg]


def test_a_bad_setting_names_the_setting_not_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationException) as caught:
        create("local_file", settings={"path": str(tmp_path), "fsync": "maybe"})
    assert str(caught.value).startswith("setting 'fsync': Input should be a valid boolean")
    with pytest.raises(ConfigurationException) as caught:
        create("local_file", settings={"path": ""}, settings_label="--config")
    assert str(caught.value).startswith("--config path: String should have at least 1")


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_FSYNC", "maybe")
    with pytest.raises(ConfigurationException, match=r"^GROVE_CACHE_LOCAL_FILE_FSYNC: Input"):
        create("local_file", settings={"path": str(tmp_path)})


def test_unknown_variables_with_the_prefix_are_ignored_and_listed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_PATH", str(tmp_path))
    monkeypatch.setenv("grove_cache_local_file_fsynk", "false")
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_FROM_A_NEWER_VERSION", "1")
    handler = load("local_file")
    assert isinstance(handler.config, local_file.Configuration)
    assert handler.config.fsync is True
    assert local_file.Configuration.unknown_variables() == [
        "GROVE_CACHE_LOCAL_FILE_FROM_A_NEWER_VERSION",
        "grove_cache_local_file_fsynk",
    ]


def test_the_handler_variable_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROVE_CACHE_HANDLER", raising=False)
    assert configuration.handler_from_environment() is None
    monkeypatch.setenv("grove_cache_handler", " local_memory ")
    assert configuration.handler_from_environment() == "local_memory"
    assert type(create()).__module__ == "grove.caches.local_memory"
    monkeypatch.setenv("grove_cache_handler", "Local_Memory")
    with pytest.raises(ConfigurationException, match="no cache handler named 'Local_Memory'"):
        create()


@pytest.mark.parametrize("configuration", [local_file.Configuration, local_sqlite.Configuration])
def test_a_leading_tilde_is_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, configuration: type[pydantic.BaseModel]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert configuration(path="~/x").path == f"{tmp_path}/x"  # type: ignore[attr-defined]
    assert configuration(path="~").path == str(tmp_path)  # type: ignore[attr-defined]
    assert configuration(path="a/~/x").path == "a/~/x"  # type: ignore[attr-defined]
    assert configuration(path="$HOME/x").path == "$HOME/x"  # type: ignore[attr-defined]


def test_a_rejected_value_is_never_repeated_in_the_chained_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A mistyped setting may hold a token: neither the message nor its cause repeats it."""
    secret = "tok-3f9a-not-a-bool"
    monkeypatch.setenv("GROVE_CACHE_LOCAL_FILE_FSYNC", secret)
    with pytest.raises(ConfigurationException) as info:
        local_file.Configuration.from_environment(path=str(tmp_path))
    assert "GROVE_CACHE_LOCAL_FILE_FSYNC" in str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert isinstance(info.value.__cause__, pydantic.ValidationError)
    assert secret not in shown
