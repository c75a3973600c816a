"""Durable studies under fire: several `optimize` workers on one study, one of them killed with SIGKILL every few
seconds (or every few finished trials, whichever comes first) and restarted, until the study holds the trials asked
for; then one more worker finishes it undisturbed.

    python bench/chaos_study.py --storage postgresql://user@host/db --workers 4 --trials 60 --kill-every 3 \\
        -- --model runs/tiny/last.pt --features features.pt --judge judge.pt

After every poll the finished trials (complete and pruned) seen so far must all still be there with the same state and
values — a lost trial fails the run — and trial numbers must be unique. Prints one line of figures (kills, trials,
lost, duplicated, seconds) and exits 1 if anything was lost or duplicated. `tests/test_chaos.py` runs it small
(SQLite with 2 workers, PostgreSQL with 4); the figures in docs/studies.md come from the command above.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class Outcome:
    kills: int
    trials: int
    lost: int
    duplicated: int
    seconds: float
    resumed: bool  # the undisturbed last worker finished the study and exported

    def line(self) -> str:
        return (f"kills {self.kills}, finished trials {self.trials}, lost {self.lost}, duplicated {self.duplicated}, "
                f"resumed to the end: {'yes' if self.resumed else 'NO'}; {self.seconds:.0f} s")


def worker_command(storage: str, study: str, trials: int, out: Path, flags: list[str]) -> list[str]:
    """One `optimize` worker on the shared study: a small search (one solver, few samples) with no time limit, so
    only the trial count ends it."""
    return [sys.executable, "-c", "from stepdrop_search.cli import main; main()", "optimize", "--storage", storage,
            "--study", study, "--trials", str(trials), "--budget", "0", "--method", "optuna", "--solver", "ddim",
            "--nfe", "4", "--samples", "8", "--promote-samples", "8", "--held-out-samples", "16", "--trial-samples", "8",
            "--out", str(out), *flags]


def finished_trials(storage: str, study: str) -> dict[int, tuple]:
    """trial number → (state, values) of every finished trial, or {} before the study exists."""
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return {}
    return {t.number: (t.state.name, tuple(t.values or ())) for t in loaded.get_trials(deepcopy=False, states=FINISHED)}


def trial_numbers(storage: str, study: str) -> list[int]:
    return [t.number for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)]


def chaos(storage: str, *, workers: int, trials: int, kill_every: float, flags: list[str], folder: Path,
          kill_every_trials: int | None = None, seed: int = 0, timeout: float = 600.0,
          study: str = "chaos") -> Outcome:
    """Run the workers, kill one at random every ``kill_every`` seconds — or as soon as ``kill_every_trials`` more
    trials finished since the last kill, so that a fast machine cannot finish the study between two kills — and
    restart it, until ``trials`` finished; then one undisturbed worker resumes the study to its end. See the module
    docstring."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng, started, kills, lost = random.Random(seed), time.monotonic(), 0, 0
    logs = [open(folder / f"worker-{i}.log", "ab") for i in range(workers)]  # noqa: SIM115 (closed below)

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(worker_command(storage, study, trials, folder / f"best-{i}.json", flags),
                                stdout=logs[i], stderr=subprocess.STDOUT)

    procs = [start(i) for i in range(workers)]
    seen: dict[int, tuple] = {}
    next_kill, finished_at_kill = time.monotonic() + kill_every, 0
    try:
        while len(seen) < trials and time.monotonic() - started < timeout:
            time.sleep(0.2)
            now = finished_trials(storage, study)
            lost += sum(1 for number, record in seen.items() if now.get(number) != record)
            seen = {**seen, **now}
            enough_trials = kill_every_trials is not None and len(seen) - finished_at_kill >= kill_every_trials
            if (time.monotonic() >= next_kill or enough_trials) and len(seen) < trials:
                i = rng.randrange(workers)
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait()
                kills += 1
                procs[i] = start(i)
                next_kill, finished_at_kill = time.monotonic() + kill_every, len(seen)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for log in logs:
            log.close()
    last = subprocess.run(worker_command(storage, study, trials, folder / "best-last.json", flags),
                          capture_output=True, text=True, timeout=timeout)
    final = finished_trials(storage, study)
    lost += sum(1 for number, record in seen.items() if final.get(number) != record)
    numbers = trial_numbers(storage, study)
    return Outcome(kills, len(final), lost, len(numbers) - len(set(numbers)), time.monotonic() - started,
                   last.returncode == 0 and len(final) >= trials and (folder / "best-last.json").is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="the study's storage: postgresql://…, sqlite:///…")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--kill-every-trials", type=int, default=None,
                        help="also kill as soon as this many more trials finished since the last kill")
    parser.add_argument("--seed", type=int, default=0, help="which worker is killed when")
    parser.add_argument("--folder", type=Path, default=Path("runs/chaos"), help="the workers' logs and exports")
    parser.add_argument("flags", nargs="*", help="more optimize flags, after --: e.g. -- --model M --features F")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    outcome = chaos(args.storage, workers=args.workers, trials=args.trials, kill_every=args.kill_every,
                    kill_every_trials=args.kill_every_trials, flags=args.flags, folder=args.folder, seed=args.seed)
    print(outcome.line())
    sys.exit(0 if outcome.lost == outcome.duplicated == 0 and outcome.resumed else 1)


if __name__ == "__main__":
    main()
