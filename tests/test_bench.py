"""The bench scripts run on any model: bench/sampler_speed.py on a checkpoint with a non-default noise schedule."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from stepdrop_search.train import train
from tests.conftest import tiny_config

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cosine_checkpoint(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("cosine-run"), schedule="cosine", T=100))


def test_sampler_speed_prints_every_row_for_a_model_with_a_cosine_schedule(cosine_checkpoint, capsys, monkeypatch):
    bench = bench_module("sampler_speed")
    allocator_set = []
    monkeypatch.setattr(bench, "keep_freed_memory_for_reuse", lambda: allocator_set.append(True))  # as the CLI does
    bench.main(["--model", str(cosine_checkpoint), "--batch", "4", "--nfe", "2", "--repeats", "1", "--device", "cpu"])
    assert allocator_set
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["policy", "solver", "NFE", "measured", "NFE", "img/s", "outside", "net"]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [(kind, solver, "2") for kind in ("uniform", "stepdrop", "adaptive")
                                                  for solver in ("ddim", "dpmpp-2m")]
    assert all(float(r[4]) > 0 and r[5].endswith("%") for r in rows)


def test_teacher_accuracy_puts_a_converged_teacher_closer_to_ddim_over_all_steps_than_a_coarse_one(cosine_checkpoint, capsys):
    bench_module("teacher_accuracy").main(["--model", str(cosine_checkpoint), "--samples", "4", "--seed", "3",
                                           "--teachers", "ddim-5", "dpmpp-2m-50"])
    rows = {line.split()[0]: float(line.split()[2]) for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["dpmpp-2m-50"] < rows["ddim-5"]  # 50 second-order steps of a 100-step model are near its ODE


def test_small_sample_bias_prints_every_solver_at_every_sample_count_over_its_blocks(cosine_checkpoint, tiny_features,
                                                                                     capsys):
    bench_module("small_sample_bias").main(["--model", str(cosine_checkpoint), "--features", str(tiny_features),
                                            "--nfe", "4", "--samples", "8", "16", "--total", "32",
                                            "--solvers", "ddim", "heun"])
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["ddim", "heun"] and all(len(r) == 8 and r[2] == r[5] == "±" for r in rows)
    assert all(float(r[3]) > 0 and float(r[6]) > 0 for r in rows)  # four blocks of 8, two of 16: a spread each


def test_small_sample_bias_refuses_a_total_without_two_blocks_of_the_largest_count():
    with pytest.raises(SystemExit) as refused:
        bench_module("small_sample_bias").main(["--samples", "64", "256", "--total", "300"])
    assert refused.value.code == 2


def fake_report(path: Path, rows: dict[str, list[float]], model_hash: str = "m",
                judge: dict[str, list[float]] | None = None) -> str:
    """An evaluate report with per-seed coach FID/KID for each row (3 seeds, 2000 samples), and the judge's where
    ``judge`` gives them."""
    import json
    import statistics

    def measured(values: list[float], prefix: str = "") -> tuple[dict, list[dict]]:
        summary = {f"{prefix}fid": {"mean": statistics.fmean(values), "std": statistics.stdev(values)},
                   f"{prefix}kid": {"mean": statistics.fmean(values) / 10, "std": 0.0}}
        return summary, [{f"{prefix}fid": f, f"{prefix}kid": f / 10} for f in values]

    results = []
    for name, v in rows.items():
        summary, seeds = measured(v)
        if judge:
            judged, judged_seeds = measured(judge[name], "judge_")
            summary |= judged
            seeds = [a | b for a, b in zip(seeds, judged_seeds, strict=True)]
        results.append({"name": name, "failed": None, "summary": summary,
                        "per_seed": [{"seed": i, "nfe": 5.0} | values for i, values in enumerate(seeds)]})
    path.write_text(json.dumps({"meta": {"samples": 2000, "seeds": 3, "model_hash": model_hash}, "results": results}))
    return str(path)


def test_paired_table_labels_a_reports_rows_and_shows_only_the_rows_asked_for(tmp_path, capsys):
    old = fake_report(tmp_path / "old.json", {"dp": [5.0, 6.0, 7.0], "other": [9.0, 9.0, 9.0]})
    new = fake_report(tmp_path / "new.json", {"dp": [4.0, 4.5, 5.0], "learned": [3.0, 3.5, 4.0]})
    bench_module("paired_table").main([f"former={old}", new, "--reference", "learned", "--rows", "former:dp,dp"])
    out = capsys.readouterr().out
    assert "| former:dp | 5 | 6.000 ± 1.000 |" in out and "| +2.500 ± 0.500 |" in out  # paired per seed: 2, 2.5, 3
    assert "| dp | 5 | 4.500 ± 0.500 |" in out and "other" not in out
    with pytest.raises(SystemExit):
        bench_module("paired_table").main([new, "--reference", "learned", "--rows", "former:dp"])


def test_model_compare_pairs_each_common_row_of_two_models_per_seed(tmp_path, capsys):
    old = fake_report(tmp_path / "old.json", {"ddim-5": [10.0, 12.0, 14.0], "heun-10": [3.0, 3.0, 3.0],
                                              "only-old": [1.0, 1.0, 1.0]}, model_hash="old")
    new = fake_report(tmp_path / "new.json", {"ddim-5": [9.0, 10.5, 13.0], "heun-10": [3.1, 2.7, 3.2]}, model_hash="new")
    bench_module("model_compare").main(["--old", old, "--new", new])
    out = capsys.readouterr().out
    # ddim-5: Δ per seed −1, −1.5, −1 → mean −1.167, std 0.289: better by more than 2 std although the seeds' own
    # spreads (2.0 and 2.0) overlap; heun-10's Δ +0.1, −0.3, +0.2 is noise
    assert "| ddim-5 | 12.000 ± 2.000 | 10.833 ± 2.021 | -1.167 ± 0.289 | -1.00, -1.50, -1.00 | -0.1167 | new better |" in out
    assert "| heun-10 |" in out and out.rstrip().endswith("| tie (within 2 std) |") and "only-old" not in out
    assert "coach FID" in out and "judge" not in out  # reports from before the judge: the coach decides
    with pytest.raises(SystemExit):  # two new-model reports of different models are not one new model
        bench_module("model_compare").main(["--old", old, "--new", new, old])


def test_a_difference_the_judge_and_the_coach_disagree_on_in_sign_is_a_tie(tmp_path, capsys):
    coach = {"ref": [5.0, 5.0, 5.0], "learned": [4.0, 4.1, 3.9], "plain": [6.0, 6.1, 5.9]}
    judge = {"ref": [7.0, 7.0, 7.0], "learned": [7.5, 7.6, 7.4], "plain": [8.0, 8.1, 7.9]}
    report = fake_report(tmp_path / "r.json", coach, judge=judge)
    bench_module("paired_table").main([report, "--reference", "ref"])
    out = capsys.readouterr().out
    assert "verdicts on the judge network" in out
    # learned: the coach says −1.0, the judge +0.5 (beyond its noise): the coach was fooled, so no claim either way
    assert "| learned | 5 | 7.500 ± 0.100 | 4.000 | +0.500 ± 0.100 |" in out and "tie (judge and coach disagree)" in out
    assert out.rstrip().splitlines()[-1].endswith("| reference better |")  # plain: both nets agree it is worse


def test_gradient_losses_reports_each_loss_with_its_cost_and_held_out_score(cosine_checkpoint, tiny_features, capsys,
                                                                            monkeypatch, tmp_path):
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path / "cache"))
    bench_module("gradient_losses").main(["--model", str(cosine_checkpoint), "--features", str(tiny_features),
                                          "--solver", "dpmpp-2m", "--nfe", "3", "--init", "99,50,10",
                                          "--losses", "l2,fid", "--samples", "8", "--epochs", "1", "--held-out", "16",
                                          "--seeds", "2", "--teacher", "ddim-20"])
    out = capsys.readouterr().out
    assert out.count("held-out proxy-FID") == 2 and "start [99.0, 50.0, 10.0]" in out
    assert "l2: 8 + 8 samples, 1 epochs" in out and "fid: 8 + 8 samples" in out
    # "NAME …proxy-FID MEAN ± STD (SEED0, SEED1)" for the start and each loss, then the paired differences
    scores = {m[0]: [float(m[2]), float(m[3])] for m in
              re.findall(r"^(\w+)[: ].*proxy-FID (\S+) ± \S+ \((\S+), (\S+)\)$", out, flags=re.M)}
    assert set(scores) == {"start", "l2", "fid"}
    best = min(scores, key=lambda name: sum(scores[name]))
    assert f"best: {best}" in out
    for loss in ("l2", "fid"):  # paired per seed: the same x_T, so each difference is the two scores' difference
        delta = re.findall(rf"^{loss} − start: \S+ ± \S+ \((\S+), (\S+)\)$", out, flags=re.M)[0]
        expected = [row - start for row, start in zip(scores[loss], scores["start"], strict=True)]
        assert [float(d) for d in delta] == pytest.approx(expected, abs=2e-3)


def test_training_curve_scores_every_snapshot_and_the_start(tmp_path, tiny_features, capsys):
    from stepdrop_search.train import train

    train(tiny_config(tmp_path / "run", steps=20, snapshot_every=10))
    start = tmp_path / "run" / "snapshots" / "step-000010.pt"
    bench_module("training_curve").main([str(tmp_path / "run"), "--start", str(start), "--nfe", "3", "--samples", "8",
                                         "--seeds", "1", "--features", str(tiny_features), "--out", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["start", "10", "20"]
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert len(rows) == 3 and rows[0]["weights_hash"] == rows[1]["weights_hash"] != rows[2]["weights_hash"]
    bench_module("training_curve").main([str(tmp_path / "run"), "--snapshots", "20", "--nfe", "3", "--samples", "8",
                                         "--seeds", "1", "--features", str(tiny_features)])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["20"]


def test_training_curve_keeps_scored_rows_reports_paired_changes_and_plots(tmp_path, tiny_features, capsys, monkeypatch):
    from stepdrop_search.train import train

    curve = bench_module("training_curve")
    train(tiny_config(tmp_path / "run", steps=20, snapshot_every=10))
    args = [str(tmp_path / "run"), "--nfe", "3", "--samples", "8", "--seeds", "2", "--features", str(tiny_features),
            "--out", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")]
    curve.main(args)
    first = capsys.readouterr().out
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [row["step"] for row in rows] == ["10", "20"] and len(rows[1]["kid"]["3"]) == 2
    change = [b - a for a, b in zip(rows[0]["fid"]["3"], rows[1]["fid"]["3"], strict=True)]
    assert f"(Δ {sum(change) / 2:+.3f}" in first and re.search(r"^flat: (yes|no) ", first, flags=re.M)
    assert (tmp_path / "c.png").stat().st_size > 1000

    def never(*_args, **_kwargs):
        raise AssertionError("a row already in --out was scored again")

    monkeypatch.setattr(curve, "score", never)
    curve.main(args)  # same settings: every row is kept
    assert capsys.readouterr().out.splitlines()[2:4] == first.splitlines()[2:4]
    curve.main(args + ["--snapshots", "20"])  # a part of the curve: the other rows stay in the file
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == rows
    made = (tmp_path / "c.json").read_text()
    with pytest.raises(SystemExit, match="other settings"):
        curve.main(args[:6] + ["3"] + args[7:])  # other seeds: refused before any scoring, the file untouched
    assert (tmp_path / "c.json").read_text() == made


def test_a_curve_is_flat_only_when_every_paired_change_is_within_its_noise():
    curve = bench_module("training_curve")
    before = {"fid": {"10": [3.0, 3.2, 3.1]}, "kid": {"10": [0.010, 0.011, 0.012]}}
    noisy = {"fid": {"10": [2.9, 3.3, 3.1]}, "kid": {"10": [0.011, 0.010, 0.012]}}
    better = {"fid": {"10": [2.8, 3.0, 2.9]}, "kid": {"10": [0.011, 0.010, 0.012]}}  # −0.2 on every seed
    assert curve.is_flat(before, noisy) and not curve.is_flat(before, better)
    assert not curve.is_flat({"fid": {"10": [3.0]}, "kid": {"10": [0.01]}}, {"fid": {"10": [3.0]}, "kid": {"10": [0.01]}})


def test_a_curve_trend_compares_the_mean_of_the_last_snapshots_with_the_ones_before():
    curve = bench_module("training_curve")

    def row(step, fid):
        return {"step": str(step), "fid": {"10": fid}, "kid": {"10": [0.01, 0.01, 0.01]}}

    offsets = [(0.0, 0.1, -0.1), (0.3, 0.2, 0.4), (-0.1, 0.0, -0.2), (0.25, 0.15, 0.1), (-0.2, -0.1, -0.3), (0.2, 0.25, 0.1)]
    wander = [row(1000 * (i + 1), [3.0 + a, 3.2 + b, 3.1 + c]) for i, (a, b, c) in enumerate(offsets)]
    assert not curve.is_flat(wander[-2], wander[-1])  # the last two differ by 0.35–0.4 on every seed
    assert curve.trend_line(wander, [10]).startswith("trend: flat (the mean of steps 4000–6000 against 1000–3000")
    falling = [row(1000 * (i + 1), [3.0 - 0.1 * i, 3.2 - 0.1 * i, 3.1 - 0.1 * i]) for i in range(6)]
    assert "FID NFE 10 -0.300 ± 0.000" in curve.trend_line([row("start", [4, 4, 4])] + falling, [10])
    assert curve.trend_line(falling, [10]).startswith("trend: not flat")
    assert curve.trend_line(falling[:5], [10]) is None
    assert curve.trend_line([row("start", [4, 4, 4])] + falling[:5], [10]) is None  # the start is no snapshot
    one_seed = [{"step": r["step"], "fid": {"10": r["fid"]["10"][:1]}, "kid": {"10": [0.01]}} for r in falling]
    assert curve.trend_line(one_seed, [10]).startswith("trend: cannot tell with one seed")


def test_more_steps_spectrum_puts_fine_detail_in_the_high_band_and_smooth_shading_in_the_low_one():
    """bench/more_steps.py's image check: a checkerboard's power lies in the high band, a gentle ramp's in the low one,
    so a sampler that smooths fine detail shows as less high-band power than the real images."""
    import torch

    more_steps = bench_module("more_steps")
    coords = torch.arange(16)
    checker = ((coords[:, None] + coords[None, :]) % 2 * 2 - 1).float().expand(4, 1, 16, 16)
    ramp = (coords[None, :].float() / 15 * 2 - 1).expand(16, 16).expand(4, 1, 16, 16)
    low, mid, high = more_steps.band_power(checker)
    assert high > 1e3 * max(low, mid)
    low, mid, high = more_steps.band_power(ramp)
    assert low > 10 * high
    assert more_steps.as_measured(torch.tensor([1.7, -3.0, 0.001])).tolist() == pytest.approx([1.0, -1.0, 1 / 255], abs=1e-6)
