"""Image data sets as in-memory float tensors in [−1, 1], shape (N, C, H, W).

Every loader reads plain files with code of our own (IDX, CIFAR batches through a restricted
unpickler, PNG/JPEG via Pillow), so nothing here executes code from a data file. A missing or corrupt
file raises :class:`UserError` naming the path and how to get the data.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stepdrop_search.errors import UserError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "folder", "synthetic")
DEFAULT_ROOTS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
HOW_TO_GET = {
    "fashion-mnist": "install the Debian package dataset-fashion-mnist, or pass --data DIR (or set STEPDROP_DATA) "
    "to a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
    "mnist": "pass --data DIR (or set STEPDROP_DATA) to a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
    "cifar10": "pass --data DIR to a folder holding cifar-10-batches-py/ (or use --download where the network allows)",
    "folder": "pass --data DIR to a folder of PNG/JPEG images (one subfolder per class for features train)",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ImageData:
    """Images in [−1, 1] plus what a checkpoint must remember about them."""

    name: str
    images: torch.Tensor  # float32 (N, C, H, W)
    labels: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]


def to_unit_range(uint8_images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [−1, 1]."""
    return torch.from_numpy(np.array(uint8_images, dtype=np.uint8)).float().div_(127.5).sub_(1.0)


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).clamp_(-1, 1)


def resolve_root(name: str, data_dir: str | os.PathLike | None) -> Path:
    """--data DIR, else $STEPDROP_DATA, else the data set's default location."""
    chosen = data_dir or os.environ.get("STEPDROP_DATA") or DEFAULT_ROOTS.get(name)
    if not chosen:
        raise UserError(f"data set {name!r} needs a location: {HOW_TO_GET[name]}")
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; {HOW_TO_GET[name]}")
    return root


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes: magic 0x0000_08_NN, NN = number of dimensions."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} values, found {data.size}")
        return data.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise UserError(f"{path} is not a valid IDX file ({exc}); re-download or reinstall the data set") from None


def load_idx_dataset(name: str, root: Path, split: str) -> ImageData:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        candidates = [root / f"{stem}.gz", root / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise UserError(f"{candidates[0]} not found; {HOW_TO_GET[name]}")
        found[kind] = read_idx(path)
    images, labels = found["images"], found["labels"]
    if images.ndim != 3 or labels.shape[0] != images.shape[0]:
        raise UserError(f"{root}: images {images.shape} and labels {labels.shape} do not match; re-download the data set")
    return ImageData(name, to_unit_range(images[:, None]), torch.from_numpy(labels.astype(np.int64)))


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and uint8 arrays) and refuses anything else.

    The CIFAR-10 python release is a pickle; a plain ``pickle.load`` would run arbitrary code from a
    tampered file. Only the numpy reconstruction functions the batches need are allowed.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; pure data
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10(root: Path, split: str, download: bool) -> ImageData:
    folder = root / "cifar-10-batches-py"
    if download and not folder.is_dir():
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(root),
                                         md5="c58f30108f718f92721af3b95e74349a")
        except Exception as exc:  # any network failure becomes the same one-line error
            raise UserError(f"downloading CIFAR-10 into {root} failed ({exc}); {HOW_TO_GET['cifar10']}") from None
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for batch in names:
        path = folder / batch
        if not path.is_file():
            raise UserError(f"{path} not found; {HOW_TO_GET['cifar10']}")
        try:
            with open(path, "rb") as f:
                entry = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels.extend(int(v) for v in entry[b"labels"])
        except Exception as exc:  # corrupt or foreign file: say which one
            raise UserError(f"{path} is not a valid CIFAR-10 batch ({exc}); re-download the data set") from None
        images.append(data)
    return ImageData("cifar10", to_unit_range(np.concatenate(images)), torch.tensor(labels))


#: In a labelled image folder, every TEST_EVERY-th image of each class (in file-name order) is the test split.
TEST_EVERY = 10


def _held_out(index: int, count: int) -> bool:
    """Whether a class's ``index``-th image (of ``count``) is in the test split: every TEST_EVERY-th, and the last one
    of a class too small to have one."""
    return index % TEST_EVERY == TEST_EVERY - 1 or (count < TEST_EVERY and index == count - 1)


def load_folder(root: Path, image_size: int | None, channels: int, split: str = "train") -> ImageData:
    """Images under ``root``, resized to ``image_size`` (default 32). When every image sits in a subfolder, the
    subfolders are classes (sorted names → labels 0, 1, …) and the folder splits per class: every
    :data:`TEST_EVERY`-th image is ``test``, the rest ``train`` — what ``features train`` needs for an honest held-out
    accuracy. An unlabelled folder is one split (every image, for training a diffusion model)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no PNG/JPEG images under {root}; {HOW_TO_GET['folder']}")
    parts = [p.relative_to(root).parts for p in files]
    labels = None
    if all(len(part) > 1 for part in parts):
        classes = sorted({part[0] for part in parts})
        by_class = {c: [f for f, part in zip(files, parts, strict=True) if part[0] == c] for c in classes}
        if any(len(members) < 2 for members in by_class.values()):
            raise UserError(f"class folders under {root} need at least 2 images each to split into train and test")
        keep = [(f, i) for i, c in enumerate(classes) for j, f in enumerate(by_class[c])
                if _held_out(j, len(by_class[c])) == (split == "test")]
        files, labels = [f for f, _ in keep], torch.tensor([i for _, i in keep])
    mode = "L" if channels == 1 else "RGB"
    size = image_size or 32
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"{path} is not a readable image ({exc}); remove or replace it") from None
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return ImageData("folder", to_unit_range(np.stack(arrays)), labels)


def synthetic_shapes(n: int, image_size: int = 16, channels: int = 1, seed: int = 0) -> ImageData:
    """Procedural discs, squares and rings on a dark background; same seed → same images.

    Cheap to make and easy to learn, so tests can train a model that produces structure in seconds.
    """
    gen = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, image_size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kind = torch.randint(0, 3, (n,), generator=gen)
    centre = (torch.rand(n, 2, generator=gen) - 0.5) * 0.8
    radius = 0.25 + 0.35 * torch.rand(n, generator=gen)
    colour = 0.4 + 0.6 * torch.rand(n, channels, generator=gen)
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    r = radius[:, None, None]
    dist = (dx**2 + dy**2).sqrt()
    disc = dist < r
    square = (dx.abs() < r * 0.85) & (dy.abs() < r * 0.85)
    ring = (dist < r) & (dist > r * 0.6)
    mask = torch.where(kind[:, None, None] == 0, disc, torch.where(kind[:, None, None] == 1, square, ring))
    images = mask[:, None].float() * colour[:, :, None, None] * 2 - 1
    return ImageData("synthetic", images, kind)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, split: str = "train",
                 image_size: int | None = None, channels: int | None = None, download: bool = False,
                 synthetic_count: int = 2048, seed: int = 0) -> ImageData:
    """Load a named data set, resized to ``image_size`` if given (native resolution otherwise)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use train or test")
    if name == "synthetic":
        # The test split is a disjoint draw so held-out checks are honest.
        data = synthetic_shapes(synthetic_count, image_size or 16, channels or 1, seed + (split == "test") * 7919)
        return data
    if name in ("fashion-mnist", "mnist"):
        data = load_idx_dataset(name, resolve_root(name, data_dir), split)
    elif name == "cifar10":
        root = Path(data_dir or os.environ.get("STEPDROP_DATA") or ".").expanduser()
        if download:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise UserError(f"data folder {root} does not exist; {HOW_TO_GET['cifar10']}")
        data = load_cifar10(root, split, download)
    elif name == "folder":
        return load_folder(resolve_root(name, data_dir), image_size, channels or 3, split)
    else:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if channels is not None and channels != data.channels:
        raise UserError(f"data set {name} has {data.channels} channel(s), not {channels}")
    return ImageData(data.name, resize(data.images, image_size), data.labels)


def num_classes(data: ImageData) -> int:
    """How many classes a labelled data set has (labels 0..K−1); refused for unlabelled data, which a class-conditional
    model cannot be trained on."""
    if data.labels is None:
        raise UserError(f"{data.name}: these images carry no class labels; a conditional model needs a labelled data "
                        "set (an image folder with one subfolder per class, or fashion-mnist, mnist, cifar10)")
    return int(data.labels.max()) + 1


def horizontal_flip_makes_sense(name: str) -> bool:
    """Mirror images only where the data set is mirror-symmetric in meaning (not digits)."""
    return name not in ("mnist",)
