"""Handler loading through the grove.caches entry-point group, and configuration errors."""

import textwrap
from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

import grove.caches
from grove.caches import BaseCache, create, load, names
from grove.caches.configuration import HandlerConfiguration
from grove.caches.local_memory import Handler as LocalMemory
from grove.exceptions import ConfigurationException


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a third-party distribution with handlers, as pip would lay it out."""
    (tmp_path / "acme_cache.py").write_text(
        textwrap.dedent(
            """
            from pydantic_settings import SettingsConfigDict

            from grove.caches import BaseCache
            from grove.caches.configuration import HandlerConfiguration
            from grove.caches.local_memory import Handler as Memory


            class Configuration(HandlerConfiguration):
                model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_ACME_")
                endpoint: str
                retries: int = 3


            class Handler(Memory):
                configuration = Configuration

                def __init__(self, config=None):
                    super().__init__()
                    self.config = config or Configuration.from_environment()
                    self.setup_calls = 0

                def setup(self):
                    self.setup_calls += 1


            class NotAHandler:
                pass
            """
        )
    )
    dist_info = tmp_path / "acme_cache-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-cache\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[grove.caches]\n"
        "acme = acme_cache:Handler\n"
        "acme_broken = acme_cache:NotAHandler\n"
        "acme_missing = acme_cache_is_not_installed:Handler\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_default_is_local_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROVE_CACHE_HANDLER", raising=False)
    assert type(load()) is LocalMemory


def test_environment_names_the_handler(monkeypatch: pytest.MonkeyPatch, third_party: Path) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "acme")
    monkeypatch.setenv("grove_cache_acme_endpoint", "http://127.0.0.1:1")
    handler = load()
    assert type(handler).__module__ == "acme_cache"
    assert handler.setup_calls == 1  # type: ignore[attr-defined]
    assert handler.config is not None
    assert handler.config.model_dump()["endpoint"] == "http://127.0.0.1:1"


def test_explicit_name_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROVE_CACHE_HANDLER", "does_not_exist")
    assert type(load("local_memory")) is LocalMemory


def test_unknown_name_lists_installed_handlers(third_party: Path) -> None:
    with pytest.raises(ConfigurationException) as caught:
        load("nope")
    message = str(caught.value)
    assert "GROVE_CACHE_HANDLER" in message
    assert "'nope'" in message
    assert "acme" in message
    assert "local_memory" in message


def test_names_lists_built_in_and_third_party_handlers(third_party: Path) -> None:
    assert {"local_memory", "acme"} <= set(names())


def test_missing_setting_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, third_party: Path
) -> None:
    monkeypatch.delenv("GROVE_CACHE_ACME_ENDPOINT", raising=False)
    with pytest.raises(ConfigurationException, match="GROVE_CACHE_ACME_ENDPOINT is required"):
        load("acme")


def test_invalid_setting_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, third_party: Path
) -> None:
    monkeypatch.setenv("GROVE_CACHE_ACME_ENDPOINT", "x")
    monkeypatch.setenv("GROVE_CACHE_ACME_RETRIES", "many")
    with pytest.raises(ConfigurationException, match=r"GROVE_CACHE_ACME_RETRIES: .*integer"):
        load("acme")


def test_entry_point_that_is_not_a_handler(third_party: Path) -> None:
    with pytest.raises(ConfigurationException, match=r"not a grove\.caches\.BaseCache subclass"):
        load("acme_broken")


def test_entry_point_that_cannot_be_imported(third_party: Path) -> None:
    with pytest.raises(ConfigurationException, match=r"acme_missing.*cannot be imported"):
        load("acme_missing")


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings(HandlerConfiguration):
        model_config = SettingsConfigDict(env_prefix="GROVE_CACHE_TEST_")
        path: str

    monkeypatch.setenv("GROVE_CACHE_TEST_PATH", "/from/env")
    assert Settings.from_environment().path == "/from/env"
    assert Settings.from_environment(path="/explicit").path == "/explicit"
    assert Settings.env_name("path") == "GROVE_CACHE_TEST_PATH"


def test_upstream_style_handler_still_works() -> None:
    """A handler written against upstream Grove: subclass BaseCache, implement three."""

    class Upstream(BaseCache):
        def __init__(self) -> None:
            self.data: dict[tuple[str, str], str] = {}

        def get(self, pk: str, sk: str) -> str:
            return self.data[(pk, sk)]

        def set(
            self,
            pk: str,
            sk: str,
            value: str,
            not_set: bool = False,
            constraint: str | None = None,
        ) -> None:
            self.data[(pk, sk)] = value

        def delete(self, pk: str, sk: str, constraint: str | None = None) -> None:
            self.data.pop((pk, sk), None)

    handler = Upstream()
    handler.setup()
    handler.set("pk", "sk", "v")
    assert handler.get("pk", "sk") == "v"
    assert Upstream.max_value_bytes is None
    assert not Upstream.supports_listing()
    with pytest.raises(NotImplementedError, match="cannot list entries"):
        handler.entries()


def test_public_api_is_pinned() -> None:
    assert set(grove.caches.__all__) == {
        "BaseCache",
        "CacheEntry",
        "Closing",
        "CreatingStorage",
        "Expiring",
        "Listing",
        "Maintaining",
        "create",
        "DEFAULT_HANDLER",
        "ENTRY_POINT_GROUP",
        "HANDLER_ENV",
        "load",
        "names",
    }
    assert {name for name in vars(BaseCache) if not name.startswith("_")} >= {
        "get",
        "set",
        "delete",
        "setup",
        "max_value_bytes",
        "entries",
        "supports_listing",
        "create_storage",
        "configuration",
        "from_settings",
    }


def test_settings_beat_the_environment(monkeypatch: pytest.MonkeyPatch, third_party: Path) -> None:
    monkeypatch.setenv("GROVE_CACHE_ACME_ENDPOINT", "http://127.0.0.1:1")
    handler = load("acme", settings={"retries": 7})
    assert handler.config is not None
    assert handler.config.model_dump() == {"endpoint": "http://127.0.0.1:1", "retries": 7}
    assert handler.setup_calls == 1  # type: ignore[attr-defined]
    assert create("acme").setup_calls == 0  # type: ignore[attr-defined]


def test_invalid_settings_name_the_setting(third_party: Path) -> None:
    with pytest.raises(ConfigurationException, match=r"^setting 'retries': .*integer"):
        load("acme", settings={"endpoint": "x", "retries": "many"})


def test_settings_for_a_handler_without_configuration() -> None:
    with pytest.raises(ConfigurationException, match="takes no settings"):
        load("local_memory", settings={"path": "/tmp"})
