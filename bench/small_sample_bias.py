"""Proxy-FID of each solver's uniform-step row at several sample counts on one noise seed: how the small-sample bias
(FID_N ≈ FID_∞ + k/N, k depending on the sampler) reorders solvers, which is why `optimize` promotes each solver's
best rung-0 row.

Each count N is measured on every disjoint block of N among the first ``--total`` samples and reported as the blocks'
mean ± std: one block of 64 is a draw, not a bias (on the candidate model Heun's 16 blocks of 64 ran from 6.9 to
33.8, and the first was the best of them). The last column is the FID of all ``--total`` samples.

    python bench/small_sample_bias.py --nfe 10 --samples 64 256 --total 1024 | tee bench/results/small-sample-bias-nfe10.txt
"""

from __future__ import annotations

import argparse

import torch

from stepdrop_search.diffusion.solvers import SOLVERS, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import FeatureFile, load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.seeds import search_seed


def block_fids(feats: torch.Tensor, features: FeatureFile, size: int) -> torch.Tensor:
    """Proxy-FID of every disjoint block of ``size`` consecutive samples."""
    return torch.tensor([fid_of_features(feats[i:i + size], features)
                         for i in range(0, len(feats) - size + 1, size)], dtype=torch.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--features", default=None)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--total", type=int, default=1024, help="samples generated; each count uses all its blocks")
    parser.add_argument("--seed", type=int, default=search_seed(0), help="noise seed (default: optimize's search seed)")
    parser.add_argument("--solvers", nargs="+", default=["heun", "dpmpp-3m", "ipndm", "unipc", "dpmpp-2m"], choices=SOLVERS)
    args = parser.parse_args(argv)
    if max(args.samples) * 2 > args.total:
        parser.error(f"--total {args.total} holds fewer than two blocks of {max(args.samples)}: raise it to "
                     f"{max(args.samples) * 2} or more")
    loaded = load_model(args.model)
    features = load_features_for_model(args.features, loaded.config, loaded.dataset)
    device = next(loaded.model.parameters()).device
    print(f"NFE {args.nfe}, uniform steps, noise seed {args.seed}; proxy-FID, mean ± std over the disjoint blocks of "
          f"each count among {args.total} samples, then all {args.total}")
    print(f"{'solver':<12}" + "".join(f"{f'{n} (×{args.total // n})':>20}" for n in args.samples) + f"{args.total:>10}")
    for name in args.solvers:
        spec, steps = spec_for_nfe(name, args.nfe)
        x0 = generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec,
                      n=args.total, seed=args.seed).x0
        feats = proxy_features(x0, features, device=device)[0]
        cells = [f"{fids.mean():.3f} ± {fids.std():.3f}" for fids in (block_fids(feats, features, n) for n in args.samples)]
        print(f"{name:<12}" + "".join(f"{c:>20}" for c in cells) + f"{fid_of_features(feats, features):>10.3f}")


if __name__ == "__main__":
    main()
