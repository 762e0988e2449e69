"""``savegress-gw checkpoint show | reset``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from savegress_gw.cli import main


@pytest.fixture()
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{type: generator}}\ncheckpoint: {{dir: {tmp_path / 'ck'}}}\n")
    return path


def test_show_and_reset(profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoint", "show", "-c", str(profile)]) == 0
    assert "no checkpoint at" in capsys.readouterr().out
    stored = tmp_path / "ck" / "savegress-gw.json"
    stored.parent.mkdir()
    stored.write_text(json.dumps({"source": "generator", "position": 42}))
    assert main(["checkpoint", "show", "-c", str(profile)]) == 0
    assert '"position": 42' in capsys.readouterr().out
    assert main(["checkpoint", "reset", "-c", str(profile)]) == 0
    assert not stored.exists() and json.loads((tmp_path / "ck" / "savegress-gw.json.bak").read_text())["position"] == 42


def test_a_corrupt_checkpoint_stops_the_gateway_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    from savegress_gw.checkpoint import CheckpointError, CheckpointStore
    from savegress_gw.profile.settings import CheckpointSettings

    store = CheckpointStore(CheckpointSettings(dir=str(tmp_path)), "gw", "generator")
    store.path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"gw\.json.*checkpoint reset -c"):
        store.load()
