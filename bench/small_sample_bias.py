"""Proxy-FID of each solver's uniform-step row at several sample counts on one noise seed: how the small-sample bias
(FID_N ≈ FID_∞ + k/N, k depending on the sampler) reorders solvers, which is why `optimize` promotes each solver's
best rung-0 row.

    python bench/small_sample_bias.py --nfe 10 --samples 64 256 | tee bench/results/small-sample-bias-nfe10.txt
"""

from __future__ import annotations

import argparse

from stepdrop_search.diffusion.solvers import SOLVERS, spec_for_nfe
from stepdrop_search.generation import generate
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, kid_of_features, proxy_features
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.seeds import search_seed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--features", default=None)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seed", type=int, default=search_seed(0), help="noise seed (default: optimize's search seed)")
    parser.add_argument("--solvers", nargs="+", default=["heun", "dpmpp-3m", "ipndm", "unipc", "dpmpp-2m"], choices=SOLVERS)
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    features = load_features_for_model(args.features, loaded.config, loaded.dataset)
    device = next(loaded.model.parameters()).device
    print(f"NFE {args.nfe}, uniform steps, noise seed {args.seed}; proxy-FID (KID) at each sample count")
    print(f"{'solver':<12}" + "".join(f"{n:>20}" for n in args.samples))
    for name in args.solvers:
        spec, steps = spec_for_nfe(name, args.nfe)
        x0 = generate(loaded.model, loaded.schedule, Uniform(nfe=steps, schedule=loaded.schedule), spec,
                      n=max(args.samples), seed=args.seed).x0
        cells = []
        for n in args.samples:
            feats = proxy_features(x0[:n], features, device=device)[0]
            cells.append(f"{fid_of_features(feats, features):.3f} ({kid_of_features(feats, features)[0]:.4f})")
        print(f"{name:<12}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
