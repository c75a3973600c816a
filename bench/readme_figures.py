"""README's two figures, from the regenerated results: what the exports look like, and what they score.

    python bench/readme_figures.py --exports 5=bench/results/reproduced/learned-nfe5 \\
        10=bench/results/reproduced/learned-nfe10 25=bench/results/reproduced/optimize-nfe25 \\
        --solvers bench/results/reproduced/solvers-nfe5-10-25.json --out docs/figures

* ``samples-across-nfe.png``: for each NFE, 8 samples of DDIM on uniform steps and of the export, from the same x_T
  (evaluation seed 0), one row each — what the search buys at a glance.
* ``quality-vs-nfe.png``: judge FID (mean ± std over the evaluation seeds) against measured NFE: DDIM on uniform steps,
  each export, and the best pool rows its evaluation measured beside it (``against_pool`` in bench/reproduce.sh).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stepdrop_search.diffusion.solvers import SolverSpec  # noqa: E402
from stepdrop_search.generation import generate  # noqa: E402
from stepdrop_search.loading import load_model  # noqa: E402
from stepdrop_search.policies import load_policy  # noqa: E402
from stepdrop_search.policies.kinds import Uniform  # noqa: E402

POOL_ROWS = 3  # best pool rows drawn beside each export


def sample_rows(exports: dict[int, Path], model: str | None, n: int = 8) -> tuple[list[torch.Tensor], list[str]]:
    """For each export's NFE, n samples of DDIM on uniform steps and n of the export, from the same x_T."""
    loaded = load_model(model)
    rows, labels = [], []
    for nfe, folder in sorted(exports.items()):
        doc = load_policy(folder / "best.json", loaded.schedule)
        for label, policy, solver, runtime in (
                (f"DDIM, uniform, {nfe} NFE", Uniform(nfe=nfe, schedule=loaded.schedule), SolverSpec("ddim"), doc.runtime),
                (f"--nfe {nfe} export: {doc.solver.name}, {doc.solver.solver.nfe(doc.policy.nfe)} NFE", doc.policy,
                 doc.solver, doc.runtime)):
            run = generate(loaded.model, loaded.schedule, policy, solver, n=n, seed=0, runtime=runtime)
            rows.append(run.x0.clamp(-1, 1))
            labels.append(label)
    return rows, labels


def draw_samples(rows: list[torch.Tensor], labels: list[str], path: Path) -> Path:
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels, strict=True)):
        for c in range(n):
            ax = axes[r][c]
            image = (images[c].permute(1, 2, 0).cpu().numpy() + 1) / 2
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("the same x_T (evaluation seed 0) through DDIM on uniform steps and through the export", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def point(row: dict) -> tuple[float, float, float]:
    summary = row["summary"]
    key = "judge_fid" if "judge_fid" in summary else "fid"
    return summary["nfe"]["mean"], summary[key]["mean"], summary[key]["std"]


def draw_quality(exports: dict[int, Path], solvers: Path, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ddim = [point(r) for r in json.loads(solvers.read_text())["results"] if r["name"].startswith("ddim-") and not r["failed"]]
    ax.errorbar(*zip(*sorted(ddim), strict=True), marker="o", label="DDIM, uniform steps", capsize=3)
    names: dict[tuple[float, float], list[str]] = {}  # one label per point: two jobs may export the same policy
    for i, (nfe, folder) in enumerate(sorted(exports.items())):
        rows = [r for r in json.loads((folder / "evaluate.json").read_text())["results"] if not r["failed"]]
        best = next(r for r in rows if r["name"] == "best")
        pool = sorted((r for r in rows if r["name"] != "best" and "-nfe" in r["name"]), key=lambda r: point(r)[1])
        for j, row in enumerate(pool[:POOL_ROWS]):
            ax.errorbar(*point(row), marker=".", color="grey", alpha=0.6, capsize=2,
                        label="best pool rows (evaluated beside each export)" if i == j == 0 else None)
        ax.errorbar(*point(best), marker="*", markersize=12, color="C3", capsize=3,
                    label="the export (optimize --nfe N)" if i == 0 else None)
        names.setdefault(point(best)[:2], []).append(f"--nfe {nfe}")
    for xy, jobs in names.items():
        ax.annotate(", ".join(jobs), xy, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("measured NFE")
    ax.set_ylabel("FID on the judge network (mean ± std, 3 × 2000)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", nargs="+", required=True, help="NFE=FOLDER (best.json and evaluate.json inside)")
    parser.add_argument("--solvers", type=Path, required=True, help="the every-solver evaluate report (.json)")
    parser.add_argument("--model", default=None, help="the model (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    exports = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.exports)}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, labels = sample_rows(exports, args.model)
    print(draw_samples(rows, labels, args.out / "samples-across-nfe.png"))
    print(draw_quality(exports, args.solvers, args.out / "quality-vs-nfe.png"))


if __name__ == "__main__":
    main()
