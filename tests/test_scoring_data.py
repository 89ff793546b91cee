"""spos/scoring_data.py: the data candidates are scored on, decoded once, kept in a cache file keyed by the data and
settings, read back without DALI."""
import os

import pytest
import torch

from spos import scoring_data
from utils import UserError

BACKENDS = ["dali", "torch"]
NUM_VAL = 300


def _scoring(root, cache_dir, backend="torch"):
    return scoring_data.scoring_batches(str(root), train_batch_size=64, train_iters=3, test_batch_size=128,
                                        input_size=32, workers=1, backend=backend, seed=7, cache_dir=cache_dir)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scoring_batches_are_decoded_once_and_reloaded_from_the_cache(digits_dir, tmp_path, backend):
    cache = tmp_path / "cache"
    train, val, classes, source = _scoring(digits_dir, str(cache), backend)
    assert source == "decoded" and classes == [str(c) for c in range(10)]
    assert [len(y) for _, y in train] == [64, 64, 64]
    assert sum(len(y) for _, y in val) == NUM_VAL and len(val) == 3  # 128 + 128 + 44, every val image once
    uncached_train, uncached_val, _, _ = _scoring(digits_dir, None, backend)
    (cache_file,) = cache.iterdir()
    reloaded_train, reloaded_val, reloaded_classes, source = _scoring(digits_dir, str(cache), backend)
    assert source == str(cache_file) and reloaded_classes == classes
    for batches in (reloaded_train, uncached_train):  # the same seed gives the same augmented batches
        for (x, y), (x2, y2) in zip(train, batches):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(val, reloaded_val):
        assert torch.equal(x, x2) and torch.equal(y, y2) and y2.dtype == torch.int64


def test_scoring_cache_follows_the_dataset_and_settings(digits_copy, tmp_path, spos_warnings):
    cache = tmp_path / "cache"
    _scoring(digits_copy, str(cache))
    scoring_data.scoring_batches(str(digits_copy), train_batch_size=32, train_iters=3, test_batch_size=128,
                                 input_size=32, workers=1, backend="torch", seed=7, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 2  # another batch size is another file
    os.remove(sorted((digits_copy / "val" / "3").iterdir())[0])
    _, val, _, source = _scoring(digits_copy, str(cache))
    assert source == "decoded" and sum(len(y) for _, y in val) == NUM_VAL - 1  # a removed image: decoded again
    # a damaged cache file is named, decoded again and replaced
    newest = max(cache.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"not a tensor file")
    _, _, _, source = _scoring(digits_copy, str(cache))
    assert source == "decoded" and str(newest) in spos_warnings.text
    assert _scoring(digits_copy, str(cache))[3] == str(newest)


def test_scoring_cache_is_read_without_importing_dali(digits_dir, tmp_path, fresh_python):
    """An NNI trial that finds the cache (backend "auto") never imports DALI, which costs it 0.4 s."""
    cache = tmp_path / "cache"
    _scoring(digits_dir, str(cache), "auto")
    code = ("import sys\nfrom spos import scoring_data\n"
            f"*_, source = scoring_data.scoring_batches({str(digits_dir)!r}, train_batch_size=64, train_iters=3, "
            f"test_batch_size=128, input_size=32, workers=1, backend='auto', seed=7, cache_dir={str(cache)!r})\n"
            "print(source, 'nvidia.dali' in sys.modules)")
    words = fresh_python(code)
    (cache_file,) = cache.iterdir()
    assert words == [str(cache_file), "False"]


def test_scoring_auto_falls_back_when_dali_is_installed_but_does_not_import(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_data, "dali_installed", lambda: True)
    monkeypatch.setattr(scoring_data, "dali_available", lambda: False)
    cache = tmp_path / "cache"
    *_, source = _scoring(digits_dir, str(cache), "auto")
    assert source == "decoded"
    (cache_file,) = cache.iterdir()
    assert _scoring(digits_dir, str(cache), "torch")[3] == str(cache_file)  # the torchvision loader's file
    assert _scoring(digits_dir, str(cache), "auto")[3] == str(cache_file)  # found again, not decoded


def test_cycle_batches_starts_the_loader_over():
    assert list(scoring_data.cycle_batches([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(UserError, match="no batches"):
        list(scoring_data.cycle_batches([], 2))
