
import pytest
import torch

from stepdrop_search.checkpoint import load_checkpoint, save_checkpoint
from stepdrop_search.errors import UserError
from stepdrop_search.files import atomic_write
from stepdrop_search.loading import load_model


def test_truncated_checkpoint_gives_one_clear_error(tiny_checkpoint, tmp_path):
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(UserError, match="not a readable stepdrop-search checkpoint"):
        load_model(broken)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x00\x01hello")
    with pytest.raises(UserError, match="not a readable"):
        load_model(path)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match="no 'stepdrop-search/checkpoint' header"):
        load_model(path)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "payload": _Exploit()}, path)
    with pytest.raises(UserError, match="not a readable"):
        load_model(path)


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    payload = load_checkpoint(tiny_checkpoint)
    payload["model_config"] = dict(payload["model_config"], base_channels=16)
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(UserError, match="another architecture"):
        load_model(path)


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(UserError, match="not found.*stepdrop-search train"):
        load_model(tmp_path / "absent.pt")


def test_atomic_write_leaves_old_file_intact_when_writing_fails(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")

    def failing(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]
