"""The settings object: environment parsing, clear errors, the generated configuration doc."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.shared.settings import ConfigError, Settings, configuration_markdown, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reads_streamrec_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("STREAMREC_TOP_N", "7")
    settings = load_settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9093" and settings.top_n == 7
    assert settings.redis_url is None


def test_bad_values_give_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "no-port-here")
    with pytest.raises(ConfigError, match=r"STREAMREC_KAFKA_BOOTSTRAP.*host:port"):
        load_settings()
    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "localhost:6379")
    with pytest.raises(ConfigError, match="STREAMREC_REDIS_URL"):
        load_settings()


def test_services_need_both_servers() -> None:
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL not set"):
        Settings().require_servers()


def test_model_dir_follows_data_dir_unless_set(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).model_dir == tmp_path / "models"
    assert Settings().with_data_dir(tmp_path).model_dir == tmp_path / "models"
    assert Settings(model_dir=Path("/models")).with_data_dir(tmp_path).model_dir == Path("/models")


def test_as_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(kafka_bootstrap="h:1", redis_url="redis://h:2/0", data_dir=tmp_path, top_n=9)
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    assert load_settings().model_dump() == original.model_dump()


def test_configuration_doc_is_current() -> None:
    assert DOC.read_text() == configuration_markdown(), (
        "run: python -m streamrec.shared.settings > docs/configuration.md"
    )
