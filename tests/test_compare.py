"""`evaluate` is a thin layer: the API a notebook calls gives the numbers the command writes."""

import json

from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.compare import CompareConfig, run_comparison, write_comparison


def test_the_api_and_the_command_give_the_same_results(tiny_checkpoint, tiny_features, tmp_path):
    settings = dict(baselines=("ddim", "stepdrop"), nfes=(3,), samples=8, seeds=1, metrics=("fid", "residual"),
                    teacher="ddim-20", residual_samples=4, model=str(tiny_checkpoint), features=str(tiny_features),
                    device="cpu", compile="off")
    comparison = run_comparison(CompareConfig(**settings))
    api_files = write_comparison(comparison, tmp_path / "api")
    assert {p.suffix for p in api_files} == {".json", ".csv", ".md", ".png"}

    result = CliRunner().invoke(app, ["evaluate", "--baselines", "ddim,stepdrop", "--nfe", "3", "--samples", "8", "--seeds", "1",
                                      "--metrics", "fid,residual", "--teacher", "ddim-20", "--residual-samples", "4",
                                      "--model", str(tiny_checkpoint), "--features", str(tiny_features), "--device", "cpu",
                                      "--compile", "off", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli.json").read_text())["results"]
    api = json.loads((tmp_path / "api.json").read_text())["results"]
    assert [r["name"] for r in cli] == [r["name"] for r in api] == ["ddim-3", "stepdrop-3"]
    for a, b in zip(api, cli, strict=True):
        assert a["per_seed"][0]["fid"] == b["per_seed"][0]["fid"]
        assert a["per_seed"][0]["residual"] == b["per_seed"][0]["residual"]
