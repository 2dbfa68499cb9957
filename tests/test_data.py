"""The data loaders on files in the real formats, synthetic data, and mini-batch rules."""
from __future__ import annotations

import functools
import http.server
import threading
from dataclasses import replace

import numpy as np
import pytest

from bench import data, tasks
from conftest import make_cifar_tarball, make_imdb_npz, remote_for


def test_cifar_loader_reads_the_real_layout(cifar_file):
    x_train, y_train, x_test, y_test = data.load_cifar10(cifar_file)
    assert x_train.shape == (100, 3, 32, 32) and x_test.shape == (20, 3, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() > 0.9
    assert set(np.unique(y_train)) <= set(range(10))


def test_cifar_channel_last_is_a_transpose_of_channel_first(cifar_file):
    first = data.load_cifar10(cifar_file, channel_first=True)[0]
    last = data.load_cifar10(cifar_file, channel_first=False)[0]
    assert last.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(last, first.transpose(0, 2, 3, 1))


def test_cifar_one_hot(cifar_file):
    _, y_train, _, _ = data.load_cifar10(cifar_file, one_hot=True)
    assert y_train.shape == (100, 10) and np.all(y_train.sum(axis=1) == 1)


def test_imdb_loader_applies_keras_conventions(imdb_file):
    x_train, y_train, x_test, y_test = data.load_imdb(imdb_file, max_features=30_000, seq_len=150)
    assert x_train.shape == (12, 150) and x_train.dtype == np.int32
    raw = np.load(imdb_file, allow_pickle=True)["x_train"]
    for row, review in zip(x_train, raw):
        ids = [1] + [w + 3 if w + 3 < 30_000 else 2 for w in review]
        kept = ids[-150:]  # the LAST tokens, zero padding in front
        assert row[150 - len(kept):].tolist() == kept
        assert not row[: 150 - len(kept)].any()
    assert x_train.max() < 30_000
    assert set(np.unique(y_train)) <= {0, 1}


def test_checksum_mismatch_names_the_file(cifar_file):
    good = remote_for(cifar_file, data.CIFAR10)
    data.verify(cifar_file, good)  # the right digest passes
    with open(cifar_file, "r+b") as f:  # truncate: a partial download
        f.truncate(cifar_file.stat().st_size // 2)
    with pytest.raises(data.ChecksumError, match="cifar-10-python.tar.gz"):
        data.fetch(good, cifar_file.parent, allow_download=False)


def test_the_real_files_must_match_the_published_checksums(cifar_file, imdb_file):
    # Our fixtures are not the real sets: the real digests must refuse them.
    with pytest.raises(data.ChecksumError):
        data.verify(cifar_file, data.CIFAR10)
    with pytest.raises(data.ChecksumError):
        data.verify(imdb_file, data.IMDB)


def test_offline_real_data_error_says_where_to_put_the_file(tmp_path):
    offline = replace(data.CIFAR10, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(data.DataError) as info:
        data.fetch(offline, tmp_path)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "BENCH_DATA_DIR" in message and "--data synthetic" in message


def _serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_verifies_and_caches(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    source = make_imdb_npz(served / "imdb.npz")
    server = _serve(served)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/imdb.npz"
        remote = remote_for(source, data.IMDB, url)
        cache = tmp_path / "cache"
        path = data.fetch(remote, cache)
        assert path == cache / "imdb.npz" and path.read_bytes() == source.read_bytes()
        bad = replace(remote, digest="0" * 64)
        path.unlink()
        with pytest.raises(data.ChecksumError):
            data.fetch(bad, cache)
        assert not path.exists(), "a download that fails its checksum must not take the real name"
        assert not list(cache.glob("*.part")), "no partial file left behind"
    finally:
        server.shutdown()


def test_auto_mode_uses_the_cached_real_file(tmp_path, monkeypatch):
    path = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", n_per_batch=128)
    monkeypatch.setattr(data, "CIFAR10", remote_for(path, data.CIFAR10))
    spec = tasks.sized("cnn", "cpu", quick=True)
    got = data.task_data(spec, "auto", folder=tmp_path, log=lambda m: None)
    assert got.kind == "real" and got.x_train.shape == (640, 3, 32, 32)
    assert got.x_test.shape == (128, 3, 32, 32)  # 128 test images: two complete batches


def test_auto_mode_falls_back_to_synthetic_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "IMDB", replace(data.IMDB, url="http://127.0.0.1:9/imdb.npz"))
    messages = []
    spec = tasks.sized("rnn", "cpu", quick=True)
    got = data.task_data(spec, "auto", folder=tmp_path, log=messages.append)
    assert got.kind == "synthetic"
    assert any("synthetic" in m and "imdb.npz" in m for m in messages)
    assert got.x_train.shape == (spec.train_batches * 64, 150) and got.x_train.dtype == np.int32


def test_real_mode_offline_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "IMDB", replace(data.IMDB, url="http://127.0.0.1:9/imdb.npz"))
    with pytest.raises(data.DataError, match="imdb.npz"):
        data.task_data(tasks.sized("rnn", "cpu", quick=True), "real", folder=tmp_path)


def test_corrupt_cached_file_is_a_checksum_error_in_every_mode(tmp_path):
    (tmp_path / "imdb.npz").write_bytes(b"not a zip")
    for mode in ("auto", "real"):
        with pytest.raises(data.ChecksumError, match="imdb.npz"):
            data.task_data(tasks.sized("rnn", "cpu", quick=True), mode, folder=tmp_path)


def test_synthetic_shapes_dtypes_and_seeding():
    a = data.synthetic_cifar10(64, 32, seed=3)
    b = data.synthetic_cifar10(64, 32, seed=3)
    c = data.synthetic_cifar10(64, 32, seed=4)
    assert a[0].shape == (64, 3, 32, 32) and a[0].dtype == np.float32 and a[1].dtype == np.int32
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    x, y, xt, yt = data.synthetic_imdb(10, 5, 30_000, 150, seed=1)
    assert x.shape == (10, 150) and x.dtype == np.int32 and x.min() >= 1 and x.max() < 30_000
    imgs = data.random_images(2, (3, 224, 224), seed=0, channel_first=False)
    assert imgs.shape == (2, 224, 224, 3) and imgs.dtype == np.float32


def test_only_complete_batches_are_used():
    assert data.complete_batches(10_000, 64) == 156  # 9,984 test images, as TASKS.md says
    x = np.arange(130)
    xt, yt = data.trim(x, x, 64)
    assert len(xt) == 128
    assert [len(b[0]) for b in data.minibatches(xt, yt, 64)] == [64, 64]
    assert len(data.trim(x, x, 64, limit=1)[0]) == 64
    with pytest.raises(data.DataError):
        data.trim(x[:10], x[:10], 64)


def test_shuffle_is_seeded_per_epoch_and_keeps_pairs():
    x = np.arange(100)
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    e1, e2 = data.shuffled(x, x * 2, rng1), data.shuffled(x, x * 2, rng1)
    np.testing.assert_array_equal(e1[0], data.shuffled(x, x * 2, rng2)[0])  # same seed, same order
    assert not np.array_equal(e1[0], e2[0])  # a new order each epoch
    np.testing.assert_array_equal(e1[1], e1[0] * 2)  # labels follow their samples
    assert sorted(e1[0].tolist()) == x.tolist()
