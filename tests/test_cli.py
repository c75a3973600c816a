import subprocess
import sys

from typer.testing import CliRunner

from stepdrop_search.cli import app

runner = CliRunner()


def test_models_lists_every_preset_with_gflops():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("tiny", "xs", "s", "paper"):
        assert name in result.output


def test_sample_writes_a_png_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--nfe", "5", "--n", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_writes_small_weights_file_and_card(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 40 and card["dataset"]["name"] == "synthetic"
    assert out.stat().st_size < tiny_checkpoint.stat().st_size


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stepdrop_search", *args], capture_output=True, text=True)


def test_bad_checkpoint_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    result = run_cli("sample", "--model", str(bad), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "bad.pt" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_missing_dataset_exits_2_naming_the_path(tmp_path):
    result = run_cli("train", "--preset", "tiny", "--dataset", "mnist", "--data", str(tmp_path / "none"),
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(tmp_path / "none") in result.stderr
    assert not (tmp_path / "run").exists()


def test_impossible_nfe_exits_2(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--nfe", "0", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2
