"""Atomic writes: a failed write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.fileio import atomic_open, atomic_write_text


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    p = tmp_path / "sub" / "cfg.yaml"
    atomic_write_text(p, "a: 1\n")
    atomic_write_text(p, "a: 2\n")
    assert p.read_text() == "a: 2\n"
    assert [f.name for f in p.parent.iterdir()] == ["cfg.yaml"]


def test_failure_mid_write_keeps_the_old_file(tmp_path) -> None:
    p = tmp_path / "last.pt"
    save_checkpoint(p, {"model": {"w": torch.ones(3)}, "step": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(p, "wb") as f:
            f.write(b"partial bytes of a new checkpoint")
            raise RuntimeError("disk full")
    assert load_checkpoint(p)["step"] == 1  # the last good checkpoint is untouched
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_unserialisable_state_keeps_the_old_checkpoint(tmp_path) -> None:
    p = tmp_path / "last.pt"
    save_checkpoint(p, {"model": {}, "step": 7})
    with pytest.raises(Exception):
        save_checkpoint(p, {"model": {}, "step": 8, "bad": lambda: None})  # torch.save cannot pickle a lambda
    assert load_checkpoint(p)["step"] == 7
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_only_whole_file_modes() -> None:
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open("x", "ab"):
            pass


def test_a_file_that_cannot_be_written_is_a_user_error_and_an_oserror(tmp_path) -> None:
    """One clear message for the CLI (UserError: exit 2), still an OSError for the callers that
    carry on without an optional file (the decode cache, run.json, the studio's exports)."""
    from engine.errors import UserError
    from engine.fileio import atomic_write_text

    (tmp_path / "a-file").write_text("x")
    for target in (tmp_path, tmp_path / "a-file" / "out.txt"):
        with pytest.raises(UserError, match="cannot write") as e:
            atomic_write_text(target, "data")
        assert isinstance(e.value, OSError)
