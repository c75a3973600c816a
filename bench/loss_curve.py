"""A training run's loss curve (the EMA of the training loss that `train` logs), as a plot for the model cards in docs/.

    python bench/loss_curve.py runs/flow-xs/last.pt --out docs/flow-loss-curve.png

Reads the run's checkpoint (``weights_only``: no code is unpickled) and prints the logged points every ``--every``
steps, so the figures quoted beside the plot come from the same command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stepdrop_search.checkpoint import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a training run's last.pt")
    parser.add_argument("--out", type=Path, help="PNG to write")
    parser.add_argument("--every", type=int, default=2000, help="print the logged loss every this many steps")
    args = parser.parse_args(argv)
    saved = load_checkpoint(args.checkpoint)
    log = [(int(step), float(loss)) for step, loss in saved.get("loss_log", [])]
    if not log:
        parser.error(f"{args.checkpoint} logs no loss (not a training checkpoint?)")
    objective = saved.get("train_config", {}).get("objective") or "eps"
    print(f"{args.checkpoint}: {int(saved['step'])} steps, {float(saved['wall_time']):.0f} s of training; EMA loss:")
    for step, loss in log:
        if step % args.every == 0 or step == log[-1][0]:
            print(f"  step {step:6d}  {loss:.4f}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in log], [v for _, v in log])
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (EMA, log scale)")
        ax.set_yscale("log")
        ax.set_title(f"{args.checkpoint.parent.name}: {objective} objective")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".part.png"), dpi=110)
        args.out.with_suffix(".part.png").replace(args.out)


if __name__ == "__main__":
    main()
