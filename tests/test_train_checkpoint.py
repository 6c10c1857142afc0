"""Checkpoints and run files: atomic writes, weights_only loading, damage reported by file name."""

from __future__ import annotations

import json

import pytest
import torch

from torchliquid.train import CheckpointError, load_checkpoint, save_checkpoint, write_csv, write_json
from torchliquid.train.checkpoint import payload_sha256


def payload() -> dict:
    torch.manual_seed(0)
    model = torch.nn.GRU(3, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 2, 3))[0].sum().backward()
    optimizer.step()
    return {"trainer": {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": 3, "step": 17, "rng": {"torch": torch.get_rng_state()},
                        "history": [{"epoch": 1, "train_loss": 0.5}], "pre_training": None},
            "run_info": json.dumps({"model": {"name": "gru"}})}


def leftovers(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_with_plain_weights_only_load(tmp_path):
    original = payload()
    path = save_checkpoint(tmp_path / "checkpoint.pt", original)
    raw = torch.load(path, weights_only=True)  # any torch user can read it without our code
    assert raw["format"] == "torchliquid.checkpoint" and raw["sha256"] == payload_sha256(original)
    loaded = load_checkpoint(path)
    assert payload_sha256(loaded) == payload_sha256(original)
    for key, value in original["trainer"]["model"].items():
        assert torch.equal(loaded["trainer"]["model"][key], value)
    assert loaded["trainer"]["optimizer"]["param_groups"] == original["trainer"]["optimizer"]["param_groups"]
    assert leftovers(tmp_path) == []


def test_checksum_distinguishes_types_and_structure():
    assert payload_sha256({"a": 1}) != payload_sha256({"a": 1.0})
    assert payload_sha256({"a": 1}) != payload_sha256({"a": True})
    assert payload_sha256({"a": ["xy"]}) != payload_sha256({"a": ["x", "y"]})
    assert payload_sha256({"t": torch.zeros(2, 3)}) != payload_sha256({"t": torch.zeros(3, 2)})
    assert payload_sha256({"t": torch.zeros(2)}) != payload_sha256({"t": torch.zeros(2, dtype=torch.float64)})
    assert payload_sha256({"b": 2, "a": 1}) == payload_sha256({"a": 1, "b": 2})


def test_truncated_checkpoint_is_reported_by_name(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", payload())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated"):
        load_checkpoint(path)


def test_damaged_numbers_fail_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", payload())
    blob = torch.load(path, weights_only=True)
    next(iter(blob["payload"]["trainer"]["model"].values()))[0, 0] += 1.0  # a valid file, wrong data
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=f"{path} is corrupt.*sha256"):
        load_checkpoint(path)


@pytest.mark.parametrize("content,match", [
    ({"model": torch.zeros(1)}, "not a torchliquid checkpoint"),
    ({"format": "torchliquid.checkpoint", "format_version": 99, "payload": {}, "sha256": ""},
     "format_version 99"),
])
def test_foreign_files_are_rejected_by_name(tmp_path, content, match):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unsupported_values_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    write_csv(path, [{"a": 1}], ["a"])
    before = path.read_text()
    with pytest.raises(ValueError):  # DictWriter fails half-way: a key outside the header
        write_csv(path, [{"a": 2}, {"zzz": 3}], ["a"])
    assert path.read_text() == before and leftovers(tmp_path) == []


def test_an_interrupt_before_the_final_move_leaves_the_old_checkpoint_under_its_name(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM between keeping checkpoint.prev.pt and moving the new file in: both names
    still hold complete checkpoints (the old one), and no staging or temporary file is left."""
    import torchliquid._atomic as atomic

    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_checkpoint(path, {"epoch": 1})
    real_replace = atomic.os.replace

    def interrupted(src, dst):
        if str(dst) == str(path):
            raise KeyboardInterrupt  # lands after keep_previous, before the new file is in place
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2}, previous=previous)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert load_checkpoint(previous)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_json_keeps_floats_exact(tmp_path):
    value = {"loss": 0.1 + 0.2, "nan": float("nan")}
    write_json(tmp_path / "r.json", value)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["loss"] == value["loss"] and back["nan"] != back["nan"]
