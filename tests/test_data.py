import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from stepdrop_search.data import load_dataset, synthetic_shapes
from stepdrop_search.errors import UserError


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return tmp_path


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_loader_reads_both_splits_into_unit_range(idx_folder, name):
    train = load_dataset(name, idx_folder)
    test = load_dataset(name, idx_folder, split="test")
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert train.labels.shape == (6,)


def test_idx_loader_resizes_on_request(idx_folder):
    assert load_dataset("mnist", idx_folder, image_size=16).images.shape == (6, 1, 16, 16)


def test_stepdrop_data_environment_variable_is_used(idx_folder, monkeypatch):
    monkeypatch.setenv("STEPDROP_DATA", str(idx_folder))
    assert len(load_dataset("mnist")) == 6


def test_missing_data_folder_names_path_and_remedy(tmp_path):
    with pytest.raises(UserError, match=r"does not exist.*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_missing_idx_file_is_reported(idx_folder):
    (idx_folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz not found"):
        load_dataset("mnist", idx_folder)


def test_corrupt_idx_file_is_reported(idx_folder):
    (idx_folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="not a valid IDX file"):
        load_dataset("mnist", idx_folder)


def test_truncated_idx_file_is_reported(idx_folder):
    path = idx_folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(UserError, match="expected"):
        load_dataset("mnist", idx_folder)


def write_cifar_batch(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    entry[b"labels"] = [int(v) for v in entry[b"labels"]]
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.fixture
def cifar_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 2, i)
    write_cifar_batch(folder / "test_batch", 3, 0)
    return tmp_path


def test_cifar10_loader_reads_python_batches(cifar_folder):
    train = load_dataset("cifar10", cifar_folder)
    assert train.images.shape == (10, 3, 32, 32)
    assert load_dataset("cifar10", cifar_folder, split="test").images.shape == (3, 3, 32, 32)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_loader_refuses_code_in_a_tampered_batch(cifar_folder):
    (cifar_folder / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()}))
    with pytest.raises(UserError, match="not a valid CIFAR-10 batch.*refusing"):
        load_dataset("cifar10", cifar_folder, split="test")


def test_cifar10_missing_folder_mentions_download(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)


def test_folder_loader_reads_and_resizes_images(tmp_path):
    for i, size in enumerate((20, 40, 33)):
        Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    data = load_dataset("folder", tmp_path, image_size=16)
    assert data.images.shape == (4, 3, 16, 16)
    assert load_dataset("folder", tmp_path, image_size=8, channels=1).images.shape == (4, 1, 8, 8)


def test_folder_loader_reports_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        load_dataset("folder", tmp_path)


def test_empty_folder_is_reported(tmp_path):
    with pytest.raises(UserError, match="no PNG/JPEG images"):
        load_dataset("folder", tmp_path)


def test_synthetic_shapes_are_deterministic_by_seed_and_in_range():
    a, b, c = synthetic_shapes(32, seed=1), synthetic_shapes(32, seed=1), synthetic_shapes(32, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.min() >= -1 and a.images.max() <= 1 and a.images.std() > 0.2


def test_synthetic_test_split_differs_from_train():
    assert not torch.equal(load_dataset("synthetic").images, load_dataset("synthetic", split="test").images)


def test_unknown_dataset_is_rejected():
    with pytest.raises(UserError, match="unknown data set"):
        load_dataset("imagenet")


def test_a_folder_of_class_subfolders_is_labelled_and_split_per_class(tmp_path):
    for c, name in enumerate(("coat", "bag")):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(np.full((8, 8), 20 * c + i, dtype=np.uint8)).save(tmp_path / name / f"{i:02d}.png")
    train = load_dataset("folder", tmp_path, split="train", image_size=8, channels=1)
    test = load_dataset("folder", tmp_path, split="test", image_size=8, channels=1)
    assert len(train) == 22 and len(test) == 2  # the 10th image of each class
    assert test.labels.tolist() == [0, 1]  # sorted class names: bag = 0, coat = 1
    assert sorted(train.labels.tolist()) == [0] * 11 + [1] * 11
