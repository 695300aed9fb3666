import pytest
import torch

from conftest import SHARED_CIFAR
from trainer.config import DataConfig
from trainer.data import DataError, load_cifar


def test_local_hub_layout(tiny_cifar, cache_dir):
    data = load_cifar(DataConfig(name=str(tiny_cifar), cache_dir=str(cache_dir)))
    assert data.train.images.shape == (1024, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.test) == 203 and data.class_names[3] == "cat"
    assert data.train.labels.dtype == torch.int64 and set(data.train.labels.tolist()) <= set(range(10))
    assert data.test_format == "PNG"  # as conftest.write_hub_dataset stores them


def test_limits_take_a_prefix_and_the_cache_is_reused(tiny_cifar, cache_dir):
    config = DataConfig(name=str(tiny_cifar), cache_dir=str(cache_dir), train_limit=100, test_limit=7)
    first = load_cifar(config)
    full = load_cifar(DataConfig(name=str(tiny_cifar), cache_dir=str(cache_dir)))
    assert len(first.train) == 100 and len(first.test) == 7
    assert torch.equal(first.train.images, full.train.images[:100])
    cached = sorted(p.name for p in cache_dir.glob("*-100.npz"))
    assert cached, "decoded arrays are cached"
    assert torch.equal(load_cifar(config).train.images, first.train.images)


def test_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="data.name=../shared/datasets/cifar10"):
        load_cifar(DataConfig(name=str(tmp_path / "nowhere"), cache_dir=str(tmp_path)))


def test_unreachable_hub_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub is unreachable
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DataError, match="cannot be reached.*data.name=../shared/datasets/cifar10"):
        load_cifar(DataConfig(name="uoft-cs/cifar10", cache_dir=str(tmp_path)))


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not beside the repo")
def test_shared_cifar10_copy(cache_dir):
    data = load_cifar(DataConfig(name=str(SHARED_CIFAR), cache_dir=str(cache_dir), train_limit=500, test_limit=500))
    assert data.train.images.shape == (500, 3, 32, 32) and len(data.test) == 500
    assert data.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    counts = torch.bincount(data.train.labels, minlength=10)
    assert counts.min() > 20  # shuffled rows: a prefix has every class
    assert 60 < data.train.images.float().mean() < 180
    assert data.test_format == "JPEG"  # the copy the model card warns about
