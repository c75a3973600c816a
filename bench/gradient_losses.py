"""Which loss should learned timesteps descend? Each loss from one start, judged by proxy-FID on held-out noise.

LD3 matches a teacher's outputs (L2 or LPIPS). At few NFE the student cannot reach the teacher, and the output
closest in L2 may be a blurrier one — what proxy-FID penalises. This script learns a schedule for one solver
and NFE with each loss (``l2`` and ``features`` to the ``--teacher``'s x0, ``fid`` the batch proxy-FID against the
reference statistics) from the same start, on x_T of the search seed, and samples every result on evaluation seeds
0..S−1 (noise no loss saw, the x_T `evaluate --seeds S` uses) to compare their proxy-FID, mean ± std over the seeds and
paired per seed with the start and with the best loss.

    python bench/gradient_losses.py --solver unipc --nfe 5 --init 999,609,399,189,69
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from stepdrop_search.diffusion.solvers import spec_for_nfe
from stepdrop_search.generation import generate, initial_noise
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features
from stepdrop_search.objectives.residual import Teacher, teacher_outputs
from stepdrop_search.policies.base import timestep_tensor
from stepdrop_search.policies.kinds import Explicit
from stepdrop_search.search.gradient import learn_schedule
from stepdrop_search.seeds import evaluation_seeds, search_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_table import spread  # noqa: E402 (a sibling script, not a package)

#: (training samples, batch, epochs, learning rate) per loss: LD3's small teacher-matching sets, larger batches for
#: a batch statistic
SETTINGS = {"l2": (64, 16, 15, 5e-3), "features": (64, 16, 15, 5e-3), "fid": (256, 64, 10, 2e-3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", default="unipc")
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--init", required=True, help="comma-separated starting timesteps (noise to data)")
    parser.add_argument("--losses", default="l2,features,fid")
    parser.add_argument("--teacher", default="dpmpp-2m-200")
    parser.add_argument("--held-out", type=int, default=2000, help="samples per evaluation seed")
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds the results are compared on")
    parser.add_argument("--model", default=None)
    parser.add_argument("--features", default=None)
    parser.add_argument("--samples", type=int, default=None, help="training (and validation) x_T for every loss")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every loss")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    loaded = load_model(args.model, device=device)
    features = load_features_for_model(args.features, loaded.config, loaded.dataset, device=device)
    settings = {loss: (args.samples or n, min(batch, args.samples or batch), args.epochs or epochs, lr)
                for loss, (n, batch, epochs, lr) in SETTINGS.items()}
    spec, steps = spec_for_nfe(args.solver, args.nfe)
    init = timestep_tensor([float(v) for v in args.init.split(",")])
    seed = search_seed(0)
    cfg = loaded.config
    largest = 2 * max(n for n, *_ in settings.values())
    x_T = initial_noise(largest, (cfg.in_channels, cfg.image_size, cfg.image_size), seed)
    teacher = teacher_outputs(loaded, Teacher.parse(args.teacher), n=largest, seed=seed, log=print)

    seeds = evaluation_seeds(args.seeds)

    def held_out(steps_: torch.Tensor) -> list[float]:
        policy = Explicit(steps=tuple(steps_.tolist()), schedule=loaded.schedule)
        out = []
        for s in seeds:
            x0 = generate(loaded.model, loaded.schedule, policy, spec, n=args.held_out, seed=s).x0
            out.append(fid_of_features(proxy_features(x0, features, device=device)[0], features))
        return out

    print(f"{args.solver}, NFE {args.nfe}; proxy-FID on {args.held_out} samples × evaluation seeds 0–{seeds[-1]}")
    scores = {"start": held_out(init)}
    print(f"start {[round(float(t), 1) for t in init]}: proxy-FID {summary(scores['start'])}")
    for loss in args.losses.split(","):
        n, batch, epochs, lr = settings[loss]
        targets = x_T if loss == "fid" else teacher
        clock = time.perf_counter()
        res = learn_schedule(loaded.model, loaded.schedule, spec, steps, train=(x_T[:n], targets[:n]),
                             validation=(x_T[n:2 * n], targets[n:2 * n]), init=init, loss=loss, features=features,
                             epochs=epochs, batch_size=batch, lr=lr)
        elapsed = time.perf_counter() - clock
        scores[loss] = held_out(res.steps)
        print(f"{loss}: {n} + {n} samples, {res.epochs} epochs, {elapsed:.1f} s, "
              f"{res.forward_nfe} forward + {res.backward_nfe} backward NFE; validation {loss} "
              f"{res.initial_validation_loss:.5f} → {res.validation_loss:.5f}; steps {[round(float(t), 1) for t in res.steps]}; "
              f"held-out proxy-FID {summary(scores[loss])}")
    best = min(scores, key=lambda name: spread(scores[name])[0])
    print(f"\npaired per seed (Δ = row − reference); best: {best}")
    for name in scores:
        for reference in dict.fromkeys(("start", best)):  # once each, when the start is the best
            if name != reference:
                print(f"{name} − {reference}: {summary(differences(scores[name], scores[reference]), signed=True)}")


def differences(row: list[float], reference: list[float]) -> list[float]:
    """Per seed: the same x_T in both, so the seed's class mix cancels."""
    return [a - b for a, b in zip(row, reference, strict=True)]


def summary(values: list[float], signed: bool = False) -> str:
    """``mean ± std (per seed)``; a difference is written with its sign."""
    mean, std = spread(values)
    form = "+.3f" if signed else ".3f"
    return f"{mean:{form}} ± {std:.3f} ({', '.join(f'{v:{form}}' for v in values)})"


if __name__ == "__main__":
    main()
