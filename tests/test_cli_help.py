"""The command line explains itself: help on every option, grouped help for the long commands, examples, --version,
"did you mean" for misspelt names, no fake error bars from one seed, and tables that survive a pipe."""

import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from stepdrop_search import __version__
from stepdrop_search.cli import app

runner = CliRunner()


def commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_option_and_argument_of_every_command_says_what_it_is_for():
    missing = [f"{' '.join(path)} {param.name}" for path, command in commands(typer.main.get_command(app))
               for param in command.params if not getattr(param, "help", None)]
    assert missing == []


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"stepdrop-search {__version__}"


def test_optimize_help_groups_its_options_and_shows_examples():
    text = runner.invoke(app, ["optimize", "--help"], terminal_width=200).output
    for panel in ("Basics", "Search", "Selection", "Storage and workers", "DP and learned steps", "Examples"):
        assert panel in text
    assert text.index("--budget") < text.index("--sampler") < text.index("--held-out-samples") < text.index("--gits-gamma")
    assert "stepdrop-search optimize --nfe 10" in text


def test_a_misspelt_solver_gets_a_did_you_mean_from_the_solvers():
    result = runner.invoke(app, ["evaluate", "--baselines", "ddim,dpmpp2m", "--samples", "2"])
    assert result.exit_code == 2 and "did you mean dpmpp-2m?" in result.output and "Traceback" not in result.output


def test_one_seed_shows_no_error_bars_and_a_piped_table_is_not_cut(tiny_checkpoint, tiny_features, tiny_judge,
                                                                    tmp_path):
    model = ["--model", str(tiny_checkpoint)]
    name = "a-policy-file-whose-name-is-longer-than-eighty-columns-would-leave-room-for-in-any-table-at-all"
    assert runner.invoke(app, ["policy", "export", "uniform", "--nfe", "3", *model, "--out", f"{name}.json"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", "--policy", f"{name}.json", "--samples", "8", "--seeds", "1", "--metrics",
                                 "fid", *model, "--features", str(tiny_features), "--judge", str(tiny_judge),
                                 "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert name in result.output and "±" not in result.output.split("runtime stepdrop")[-1]
    assert "one seed's values (no spread)" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("command", [
    ["sample", "--out", "{bad}/grid.png"],
    ["sample", "--save-samples", "{bad}/x.npz"],
    ["evaluate", "--out", "{bad}/report"],
    ["optimize", "--out", "{bad}/best.json"],
    ["optimize", "--save-pool", "{bad}/pool"],
    ["train", "--out", "{bad}/run"],
    ["policy", "export", "uniform", "--nfe", "5", "--out", "{bad}/p.json"],
    ["features", "train", "--out", "{bad}/f.pt"],
])
@pytest.mark.parametrize("bad", ["/proc/nope", "{tmp}/a-file/below"])
def test_an_output_that_cannot_be_written_exits_2_in_one_line_before_any_work(command, bad, tmp_path):
    (tmp_path / "a-file").write_text("")
    bad = bad.format(tmp=tmp_path)
    started = time.perf_counter()
    result = runner.invoke(app, [part.format(bad=bad) for part in command])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert time.perf_counter() - started < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_long_evaluation_says_first_how_long_it_will_take(tiny_checkpoint, tiny_features, tiny_judge, tmp_path,
                                                             monkeypatch):
    from stepdrop_search import compare

    monkeypatch.setattr(compare, "ESTIMATE_FROM_FORWARDS", 0)
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                 "--judge", str(tiny_judge), "--baselines", "ddim", "--nfe", "2", "--samples", "4",
                                 "--seeds", "1", "--metrics", "fid", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert re.search(r"plan: 1 rows × 1 seeds × 4 samples = 8 sample-forwards; about \d+ s here", result.output)
    assert [compare.duration(s) for s in (40, 720, 8280)] == ["40 s", "12 min", "2.3 h"]


DOCS_COMMAND = ["-m", "typer", "stepdrop_search.cli", "utils", "docs", "--name", "stepdrop-search",
                "--title", "stepdrop-search command reference"]


def test_the_cli_reference_in_docs_is_the_app_as_it_is(tmp_path):
    """docs/cli.md is generated, never edited: python -m typer stepdrop_search.cli utils docs --name stepdrop-search
    --title "stepdrop-search command reference" --output docs/cli.md"""
    subprocess.run([sys.executable, *DOCS_COMMAND, "--output", str(tmp_path / "cli.md")], check=True, capture_output=True)
    docs = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert (tmp_path / "cli.md").read_text() == docs.read_text(), "docs/cli.md is stale: regenerate it (docstring above)"
