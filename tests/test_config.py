"""Config: TOML then flags, validation with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from intentd import config
from intentd.errors import ConfigError

SHIPPED_EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "intentd.toml"


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "intentd.toml"
    f.write_text('[model]\ndevice = "cpu"\nmax_batch = 4\n[vad]\nhangover_ms = 500\n')
    cfg = config.load(f, {"model": {"max_batch": 2}, "publish": {"endpoint": "ipc:///tmp/x"}})
    assert cfg.model.device == "cpu" and cfg.model.max_batch == 2
    assert cfg.vad.hangover_ms == 500
    assert cfg.publish.endpoint == "ipc:///tmp/x"


def test_print_config_round_trips(tmp_path: Path) -> None:
    cfg = config.load(None, {"source": {"spec": "wav:/x y.wav"}, "model": {"min_score": 0.5}})
    f = tmp_path / "out.toml"
    f.write_text(cfg.to_toml())
    assert config.load(f) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\ncolour = 1\n", "unknown key 'colour'"),
        ("[modle]\n", "unknown section"),
        ('[model]\nmax_batch = "8"\n', "max_batch must be int"),
        ("[model]\nmax_batch = 0\n", "max_batch must be 1..1024"),
        ('[source]\nspec = "radio"\n', "source.spec"),
        ('[publish]\nendpoint = "localhost:1"\n', "publish.endpoint"),
        ("[vad]\nframe_ms = 25\n", "frame_ms"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        config.load(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.skipif(not SHIPPED_EXAMPLE.exists(), reason="example config not written yet")
def test_shipped_example_config_is_valid() -> None:
    cfg = config.load(SHIPPED_EXAMPLE)
    assert cfg.publish.endpoint.startswith("tcp://127.0.0.1")
