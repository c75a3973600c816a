"""Add the class labels of a feature file's reference images, for per-class FID (``evaluate --metrics class-fid``).

    python bench/reference_labels.py stepdrop_search/assets/judge-fashion-mnist.pt \\
        stepdrop_search/assets/features-fashion-mnist.pt

Feature files written by `features train` since issue 32 carry them; older ones (the two shipped networks were made
before) hold the reference features of the data set's test split in its order, so the labels are that split's,
read from the data set. The network, its reference statistics and its card are unchanged; the file is rewritten
whole (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stepdrop_search.checkpoint import load_checkpoint, save_checkpoint
from stepdrop_search.data import load_dataset


def add_labels(path: Path, data_dir: str | None = None) -> int:
    payload = load_checkpoint(path)
    reference, dataset = payload["reference"], payload["dataset"]
    test = load_dataset(dataset["name"], data_dir, split=reference.get("split", "test"), image_size=dataset["image_size"])
    if test.labels is None or len(test.labels) != reference["count"]:
        raise SystemExit(f"{path}: its reference holds {reference['count']} images; the {dataset['name']} test split "
                         f"has {len(test.labels) if test.labels is not None else 'no'} labelled ones")
    reference["labels"] = test.labels.to(torch.int16)
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    return int(test.labels.max()) + 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="feature files (features train)")
    parser.add_argument("--data", default=None, help="the data set's folder (default: its standard place)")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"{path}: reference labels of {add_labels(path, args.data)} classes added")


if __name__ == "__main__":
    main()
