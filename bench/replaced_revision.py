"""The git revision whose shipped model the current one replaced: the newest revision of the model file whose weights
differ from the working tree's (a commit that only rewrote the card inside the file is not a new model).

    python bench/replaced_revision.py [stepdrop_search/assets/default-xs-fashion-mnist.pt]

Prints the revision, or nothing (exit 1) when the history holds no other weights (a shallow clone). Read by
bench/model_compare.sh and bench/reproduce.sh as the default OLD.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import torch

from stepdrop_search.checkpoint import state_dict_hash


def weights_hash(data: bytes) -> str:
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state_dict_hash(payload["model"])


def replaced_revision(path: str) -> str | None:
    with open(path, "rb") as handle:
        current = weights_hash(handle.read())
    revisions = subprocess.run(["git", "log", "--format=%H", "--", path], capture_output=True, text=True,
                               check=True).stdout.split()
    for revision in revisions:
        blob = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True)
        if blob.returncode == 0 and weights_hash(blob.stdout) != current:
            return revision
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default="stepdrop_search/assets/default-xs-fashion-mnist.pt")
    revision = replaced_revision(parser.parse_args(argv).path)
    if revision is None:
        sys.exit(1)
    print(revision)


if __name__ == "__main__":
    main()
