import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stepdrop_search.checkpoint import load_checkpoint
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_model
from stepdrop_search.train import diffusion_loss, ema_decay_at, export_weights, learning_rate, train
from tests.conftest import tiny_config


class ConstantEps(torch.nn.Module):
    """ε_θ(x, t) = w (a learnable scalar), so the loss can be computed by hand."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t):
        return self.w.expand_as(x)


def test_skip_loss_matches_s2dm_formula_on_a_hand_computed_case():
    schedule = NoiseSchedule("linear", 1000)
    a = schedule.alphas_cumprod.float()
    a_skip = schedule.skip_alphas_cumprod(10)
    coef = ((1 - a_skip) / a_skip).sqrt().float()
    x0 = torch.zeros(1, 1, 1, 2)
    noise = torch.tensor([[[[1.0, -1.0]]]])
    t = torch.tensor([500])
    model = ConstantEps(0.5)
    tau = 0.99
    loss = diffusion_loss(model, x0, t, noise, a, coef, tau)
    c = coef[500].item()
    l0 = ((1 - 0.5) ** 2 + (-1 - 0.5) ** 2) / 2
    l_skip = ((1 - c * 0.5) ** 2 + (-1 - c * 0.5) ** 2) / 2
    assert loss.item() == pytest.approx(tau * l0 + (1 - tau) * l_skip, rel=1e-6)
    # ᾱ_skip^500 = Π_{s=491..500} α_s, by hand:
    assert a_skip[500].item() == pytest.approx(torch.prod(schedule.alphas[491:501]).item())


def test_skip_loss_changes_the_gradient():
    schedule = NoiseSchedule()
    a = schedule.alphas_cumprod.float()
    a_skip = schedule.skip_alphas_cumprod(10)
    coef = ((1 - a_skip) / a_skip).sqrt().float()
    torch.manual_seed(0)
    x0, noise, t = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), torch.tensor([10, 300, 600, 999])
    grads = []
    for skip in (None, coef):
        model = ConstantEps(0.3)
        diffusion_loss(model, x0, t, noise, a, skip, 0.99).backward()
        grads.append(model.w.grad.item())
    assert grads[0] != pytest.approx(grads[1], rel=1e-3)


def test_learning_rate_warms_up_then_decays():
    cfg = tiny_config("unused", steps=1000, warmup_steps=100, lr=1e-3)
    assert learning_rate(cfg, 0) == pytest.approx(1e-5)
    assert learning_rate(cfg, 99) == pytest.approx(1e-3)
    assert learning_rate(cfg, 999) == pytest.approx(1e-4, rel=1e-3)
    assert learning_rate(cfg, 500) < learning_rate(cfg, 200)


def test_ema_decay_warms_up():
    cfg = tiny_config("unused")
    assert ema_decay_at(cfg, 0) == pytest.approx(0.1)
    assert ema_decay_at(cfg, 10**6) == cfg.ema_decay


def test_training_writes_a_loadable_checkpoint_with_everything_needed(tiny_checkpoint):
    payload = load_checkpoint(tiny_checkpoint)
    assert payload["step"] == 40
    for key in ("model", "ema", "optimizer", "rng", "schedule", "schedule_hash", "model_config", "dataset"):
        assert key in payload
    assert payload["dataset"] == {"name": "synthetic", "image_size": 16, "channels": 1}
    loaded = load_model(tiny_checkpoint)
    x = torch.randn(2, 1, 16, 16)
    assert torch.isfinite(loaded.model(x, torch.tensor([0, 999]))).all()


def test_training_is_reproducible_and_resume_continues_exactly(tmp_path):
    straight = train(tiny_config(tmp_path / "a", steps=30, checkpoint_every=10))
    interrupted = tiny_config(tmp_path / "b", steps=30, checkpoint_every=10)
    train(interrupted, stop_after=20)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 20
    train(interrupted, resume=True)
    a, b = load_checkpoint(straight), load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["step"] == 30
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name


def test_existing_run_is_not_overwritten_without_resume(tiny_checkpoint):
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(tiny_checkpoint.parent))


def test_resume_with_other_settings_is_refused(tiny_checkpoint):
    with pytest.raises(UserError, match="preset"):
        train(tiny_config(tiny_checkpoint.parent, preset="xs"), resume=True)


def test_skip_loss_training_runs(tmp_path):
    path = train(tiny_config(tmp_path, steps=5, skip_loss_every=10))
    assert load_checkpoint(path)["train_config"]["skip_loss_every"] == 10


def test_fine_tune_starts_from_the_given_weights_with_a_fresh_optimizer(tiny_checkpoint, tmp_path):
    start = load_checkpoint(tiny_checkpoint)["ema"]
    path = train(tiny_config(tmp_path, steps=1, lr=1e-12, skip_loss_every=10, init_from=str(tiny_checkpoint)))
    tuned = load_checkpoint(path)
    assert tuned["step"] == 1  # the step count and optimizer are the fine-tune's own
    for name, value in start.items():
        assert torch.allclose(tuned["model"][name].float(), value.float(), atol=1e-6), name


def test_a_fine_tunes_card_tells_every_run_behind_the_model_and_their_totals(tmp_path):
    first = export_weights(train(tiny_config(tmp_path / "a", steps=4, batch_size=8)), tmp_path / "a.pt")
    second = export_weights(train(tiny_config(tmp_path / "b", steps=3, batch_size=8, init_from=str(tmp_path / "a.pt"))),
                            tmp_path / "b.pt")
    third = export_weights(train(tiny_config(tmp_path / "c", steps=2, batch_size=4, init_from=str(tmp_path / "b.pt"))),
                           tmp_path / "c.pt")
    assert first["lineage"] == [] and first["total"]["steps"] == 4
    assert [stage["weights_hash"] for stage in third["lineage"]] == [first["weights_hash"], second["weights_hash"]]
    assert third["total"]["steps"] == 4 + 3 + 2 and third["total"]["images_seen"] == 4 * 8 + 3 * 8 + 2 * 4
    assert load_model(tmp_path / "c.pt").card["lineage"] == third["lineage"]  # the weights file carries it too
    # a card written before lineages were kept: the runs before it are unknown, and so are the totals
    old = load_checkpoint(tmp_path / "b.pt")
    old["card"] = {key: value for key, value in old["card"].items() if key not in ("lineage", "total")}
    torch.save(old, tmp_path / "old.pt")
    fourth = export_weights(train(tiny_config(tmp_path / "d", steps=1, init_from=str(tmp_path / "old.pt"))),
                            tmp_path / "d.pt")
    assert fourth["lineage"][0]["weights_hash"] is None and fourth["total"]["steps"] is None


def test_fine_tune_from_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="another architecture"):
        train(tiny_config(tmp_path, preset="xs", init_from=str(tiny_checkpoint)))


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    """SIGKILL a real `stepdrop-search train` process, then --resume: finished steps are kept."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "stepdrop_search", "train", "--preset", "tiny", "--dataset", "synthetic",
            "--steps", "400", "--batch-size", "16", "--checkpoint-every", "5", "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(out / "last.pt")["step"]
    assert 5 <= killed_at < 400
    done = subprocess.run(args[:8] + ["--steps", str(killed_at + 10)] + args[10:] + ["--resume"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "last.pt")["step"] == killed_at + 10


def test_snapshots_keep_the_ema_weights_every_n_steps_as_loadable_models(tmp_path):
    path = train(tiny_config(tmp_path / "run", steps=40, snapshot_every=20))
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("step-*.pt"))
    assert [p.name for p in snapshots] == ["step-000020.pt", "step-000040.pt"]
    last = load_model(snapshots[-1])
    exported = export_weights(path, tmp_path / "m.pt")
    assert last.weights_hash == exported["weights_hash"]  # the last snapshot is what export writes at the end
    assert json.loads(snapshots[0].with_suffix(".json").read_text())["steps"] == 20
