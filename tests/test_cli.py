import json
import subprocess
import sys

import numpy as np
import pytest
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


def test_export_carries_a_training_curve_in_the_card_and_refuses_a_bad_one_before_writing(tiny_checkpoint, tmp_path):
    import json

    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"solver": "dpmpp-2m", "rows": [{"step": "40", "fid": {"25": [9.0, 8.0]}}]}))
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(out), "--curve", str(curve)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["training_curves"][0]["rows"][0]["fid"]["25"] == [9.0, 8.0]
    curve.write_text("{}")
    refused = tmp_path / "refused.pt"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(refused), "--curve", str(curve)])
    assert result.exit_code == 2 and "training_curve.py" in result.output and not refused.exists()


def test_export_ships_a_snapshot_the_curve_chose_with_its_weights_and_card_and_refuses_a_file_without_either(
        tmp_path):
    from stepdrop_search.checkpoint import load_checkpoint, save_checkpoint
    from stepdrop_search.loading import load_model
    from stepdrop_search.train import train
    from tests.conftest import tiny_config

    train(tiny_config(tmp_path / "run", steps=20, snapshot_every=10))
    snapshot = tmp_path / "run" / "snapshots" / "step-000010.pt"
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"solver": "dpmpp-2m", "rows": [{"step": "10", "fid": {"10": [7.0]}}]}))
    out = tmp_path / "chosen.pt"
    result = runner.invoke(app, ["export", str(snapshot), "--out", str(out), "--curve", str(curve)])
    assert result.exit_code == 0, result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 10 and card["training_curves"][0]["rows"][0]["step"] == "10"
    assert load_model(out).weights_hash == load_model(snapshot).weights_hash == card["weights_hash"]
    bare = {key: value for key, value in load_checkpoint(snapshot).items() if key != "card"}
    save_checkpoint(tmp_path / "bare.pt", bare)
    result = runner.invoke(app, ["export", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "no.pt")])
    assert result.exit_code == 2 and "no model card" in result.output and not (tmp_path / "no.pt").exists()


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


def test_resume_without_a_checkpoint_is_refused_before_training(tmp_path):
    result = run_cli("train", "--preset", "tiny", "--dataset", "synthetic", "--steps", "5",
                     "--out", str(tmp_path / "typo"), "--resume")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "no checkpoint" in result.stderr and str(tmp_path / "typo") in result.stderr
    assert not (tmp_path / "typo").exists()


def test_eta_for_a_solver_without_eta_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "g.png"
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--nfe", "4", "--n", "2", "--solver", "dpmpp-2m",
                                 "--eta", "0.5", "--out", str(out)])
    assert result.exit_code == 2 and "--eta" in result.output
    assert not out.exists()


def test_a_policy_files_eta_is_not_carried_to_another_solver(tiny_checkpoint, tmp_path):
    from stepdrop_search.diffusion.solvers import SolverSpec
    from stepdrop_search.loading import load_model
    from stepdrop_search.policies import PolicyDocument, save_policy
    from stepdrop_search.policies.kinds import Uniform
    from stepdrop_search.policies.resolve import resolve_policy

    loaded = load_model(tiny_checkpoint)
    path = save_policy(tmp_path / "p.json", PolicyDocument(Uniform(nfe=4, schedule=loaded.schedule), SolverSpec("ddim", 0.3)))
    assert resolve_policy(str(path), None, None, None, None, loaded).solver == SolverSpec("ddim", 0.3)
    assert resolve_policy(str(path), None, None, "dpmpp-2m", None, loaded).solver == SolverSpec("dpmpp-2m", 0.0)


def test_sample_saves_an_npz_of_samples_and_measured_nfe(tiny_checkpoint, tmp_path):
    import numpy as np

    path = tmp_path / "s.npz"
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "stepdrop", "--nfe", "6", "--n", "5",
                                 "--out", str(tmp_path / "g.png"), "--save-samples", str(path)])
    assert result.exit_code == 0, result.output
    with np.load(path) as data:  # allow_pickle defaults to False: everything in it is a plain array
        assert data["samples"].shape == (5, 1, 16, 16) and data["samples"].dtype == np.float32
        assert -1 <= data["samples"].min() and data["samples"].max() <= 1
        assert data["nfe"].shape == (5,) and data["nfe"].min() >= 1
        assert json.loads(str(data["policy"]))["kind"] == "stepdrop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "s.npz"]  # no temp file left behind


def test_save_samples_without_npz_suffix_is_refused_before_sampling(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--nfe", "4", "--n", "2",
                                 "--out", str(tmp_path / "g.png"), "--save-samples", str(tmp_path / "s.npy")])
    assert result.exit_code == 2 and ".npz" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["train", "--dataset", "synthetic", "--preset", "tiny"], ["sample"], ["evaluate"],
                                     ["optimize", "--nfe", "3"], ["features", "train", "--dataset", "synthetic"],
                                     ["features", "score", "--dataset", "synthetic"]])
def test_every_command_that_runs_a_network_takes_device(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_help_texts_name_every_registered_solver():
    from stepdrop_search.cli import SOLVER_NAMES
    from stepdrop_search.diffusion.solvers import SOLVERS

    assert sorted(SOLVER_NAMES.split(", ")) == sorted(SOLVERS)


def test_sample_takes_an_explicit_step_list_without_nfe(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["sample", "--model", str(tiny_checkpoint), "--policy", "explicit", "--param",
                                 "steps=[999, 500.5, 120]", "--n", "2", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert "measured NFE 3.00" in result.output


def test_features_train_on_a_labelled_image_folder_reports_held_out_accuracy(tmp_path):
    from PIL import Image

    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(20):
            pixels = np.full((16, 16, 3), 30 + 180 * c, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    out = tmp_path / "features.pt"
    result = runner.invoke(app, ["features", "train", "--dataset", "folder", "--data", str(tmp_path / "data"),
                                 "--image-size", "16", "--steps", "30", "--batch-size", "16", "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0 and "on 4 images" in result.output, result.output
    assert json.loads(out.with_suffix(".json").read_text())["accuracy_test"] == 1.0
