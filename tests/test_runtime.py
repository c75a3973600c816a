"""Running the network fast: torch.compile with a symbolic batch, its fallback, and the allocator setting."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from stepdrop_search.cli import app
from stepdrop_search.errors import UserError
from stepdrop_search.model import UNet, preset_config
from stepdrop_search.runtime import (
    AUTO_COMPILE_SAMPLE_FORWARDS,
    CompiledNetwork,
    check_compile_mode,
    compile_network,
    should_compile,
)

runner = CliRunner()


def test_compiled_network_matches_eager_at_every_batch_size_with_one_compile():
    model = UNet(preset_config("tiny", image_size=16)).eval()
    network = compile_network(model, batch_size=8)
    assert isinstance(network, CompiledNetwork)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):  # sub-batches share the graph
        for n in (8, 5, 3, 2, 1):
            x, t = torch.randn(n, 1, 16, 16), torch.tensor(321).expand(n)
            torch.testing.assert_close(network(x, t), model(x, t), rtol=1e-4, atol=1e-4)


def test_a_compiled_conditional_network_takes_its_class_labels():
    # guided evaluation of the shipped conditional model went through this wrapper without its labels and failed
    model = UNet(preset_config("tiny", image_size=16, num_classes=3)).eval()
    network = compile_network(model, batch_size=4)
    assert isinstance(network, CompiledNetwork)
    with torch.no_grad():
        for n in (4, 1):
            x, t, y = torch.randn(n, 1, 16, 16), torch.tensor(321).expand(n), torch.arange(n) % 4
            torch.testing.assert_close(network(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-4)


def test_a_failed_compile_runs_the_network_eagerly_and_says_why(monkeypatch, tmp_path):
    def broken(model):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setenv("STEPDROP_CACHE", str(tmp_path))
    model = UNet(preset_config("tiny", image_size=16)).eval()
    said = []
    assert compile_network(model, batch_size=4, log=said.append) is model
    assert said == ["torch.compile is not available here (InvalidCxxCompiler: No working C++ compiler found); "
                    "running the network eagerly"]
    (tmp_path / "inductor").mkdir(exist_ok=True)
    (tmp_path / "inductor" / "stale.so").write_bytes(b"")  # with something in the cache, it is emptied and tried again
    said.clear()
    assert compile_network(model, batch_size=4, log=said.append) is model
    assert len(said) == 2 and "emptied the cache and compiling again" in said[0] and "eagerly" in said[1]
    assert not (tmp_path / "inductor").exists()


COMPILE = """
from stepdrop_search.model import UNet, preset_config
from stepdrop_search.runtime import compile_network
compile_network(UNet(preset_config("tiny", image_size=16)).eval(), batch_size=4, log=print)
"""


def compile_in_a_new_process(cache, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "STEPDROP_CACHE": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, "-c", COMPILE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


@pytest.mark.slow
def test_a_compile_killed_midway_or_a_truncated_artefact_is_rebuilt_by_the_next_run(tmp_path):
    """What a Ctrl-C during the first compile did: a 0-byte artefact in the cache, and every later run eager."""
    cache = tmp_path / "cache"
    killed = compile_in_a_new_process(cache)
    deadline = time.monotonic() + 120
    while not list((cache / "inductor").rglob("*.py")) and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)  # until the compiler has started writing its artefacts
    killed.send_signal(signal.SIGINT)
    killed.communicate(timeout=120)
    assert (cache / "inductor").is_dir()
    said = compile_in_a_new_process(cache).communicate(timeout=300)[0]
    assert "compiled the network with torch.compile" in said, said
    artefacts = [p for p in (cache / "inductor").rglob("*") if p.is_file() and p.suffix in (".so", ".py")]
    assert artefacts
    for path in artefacts:
        path.write_bytes(b"")  # truncated, as a kill between create and write leaves it
    said = compile_in_a_new_process(cache).communicate(timeout=300)[0]
    assert "compiled the network with torch.compile" in said and "not available" not in said, said


def test_auto_compiles_only_runs_big_enough_to_pay_for_it():
    assert should_compile("auto", AUTO_COMPILE_SAMPLE_FORWARDS) and not should_compile("auto", 64 * 10)
    assert should_compile("on", 1) and not should_compile("off", 10**9)
    with pytest.raises(UserError, match="--compile takes auto, on, off"):
        check_compile_mode("yes")


def test_evaluate_compiled_gives_the_eager_numbers(tiny_checkpoint, tiny_features, tmp_path):
    rows = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--features", str(tiny_features),
                                     "--baselines", "ddim,stepdrop", "--nfe", "4", "--samples", "24", "--seeds", "1",
                                     "--batch-size", "16", "--metrics", "fid", "--compile", mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        data = json.loads(out.with_suffix(".json").read_text())
        assert data["meta"]["compiled"] is (mode == "on")
        rows[mode] = {r["name"]: r["summary"] for r in data["results"]}
    for name, summary in rows["off"].items():  # stochastic sub-batches of any size go through the compiled graph too
        assert rows["on"][name]["nfe"] == summary["nfe"]
        assert rows["on"][name]["fid"]["mean"] == pytest.approx(summary["fid"]["mean"], rel=1e-3)
    assert "network: torch.compile" in (tmp_path / "on").with_suffix(".md").read_text()


def test_bad_compile_mode_exits_2_before_any_work(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--compile", "yes",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--compile takes" in result.output and not list(tmp_path.iterdir())


FAULTS_OF_A_FORWARD = """
import resource, sys, torch
from stepdrop_search.model import UNet, preset_config
from stepdrop_search.runtime import keep_freed_memory_for_reuse
if sys.argv[1] == "tuned":
    assert keep_freed_memory_for_reuse()
model = UNet(preset_config("tiny")).eval()
x, t = torch.randn(64, 1, 28, 28), torch.full((64,), 3)
with torch.no_grad():
    model(x, t)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x, t)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_cuts_the_page_faults_of_a_forward():
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FORWARD, mode], capture_output=True, text=True,
                             check=True)
        return int(run.stdout.split()[-1])

    assert faults("tuned") * 3 < faults("default")
