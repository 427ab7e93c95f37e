import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from normexp.data import TrainBatches, load_cifar10, stratified_subset
from normexp.data.loader import EvalBatches, normalize, pad, random_crop_flip
from normexp.data.sources import DataError
from tests.helpers import make_image_folder


def _paths(folder: Path, cache: Path, torchvision_root: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(cifar10_folder=str(folder), cache_dir=str(cache), torchvision_root=str(torchvision_root))


def _folder(folder: Path, cache: Path):
    return load_cifar10("folder", _paths(folder, cache))


def test_image_folder_decodes_in_class_order_and_reuses_its_cache(image_folder, tmp_path, monkeypatch):
    data = _folder(image_folder, tmp_path)
    assert data.train_images.shape == (120, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (40, 3, 32, 32)
    assert data.train_labels.tolist() == sorted(data.train_labels.tolist())
    assert torch.bincount(data.train_labels).tolist() == [12] * 10
    # class k was generated with red = 25k: the decoded colours follow the label order
    red = data.train_images[:, 0].float().mean(dim=(1, 2))
    per_class = torch.stack([red[data.train_labels == k].mean() for k in range(10)])
    assert bool((per_class[1:] > per_class[:-1]).all())
    assert len(list(tmp_path.glob("cifar10-folder-*.pt"))) == 1

    import normexp.data.sources as sources

    monkeypatch.setattr(sources, "_decode_folder", lambda files: pytest.fail("decoded again"))
    again = _folder(image_folder, tmp_path)
    assert torch.equal(again.train_images, data.train_images)
    assert again.digest == data.digest


def test_corrupt_cache_is_rebuilt(image_folder, tmp_path):
    first = _folder(image_folder, tmp_path)
    (cache,) = tmp_path.glob("cifar10-folder-*.pt")
    cache.write_bytes(cache.read_bytes()[:1000])
    again = _folder(image_folder, tmp_path)
    assert torch.equal(again.train_images, first.train_images)


def test_missing_folder_and_wrong_layout_name_the_path(tmp_path):
    with pytest.raises(DataError, match="not found.*paths.cifar10_folder.*runtime.download=true"):
        _folder(tmp_path / "nowhere", tmp_path)
    (tmp_path / "bad" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match=r"bad/train must hold exactly one folder per CIFAR-10 class.*missing: "
                                        r"airplane, .*not a class: cats"):
        _folder(tmp_path / "bad", tmp_path)


def test_a_missing_class_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=1, test_per_class=1)
    shutil.rmtree(root / "test" / "frog")
    with pytest.raises(DataError, match=r"test must hold .*; missing: frog$"):
        _folder(root, tmp_path / "cache")


def test_torchvision_source_without_files_says_how_to_fetch(tmp_path):
    with pytest.raises(DataError, match="runtime.download=true"):
        load_cifar10("torchvision", _paths(tmp_path, tmp_path, torchvision_root=tmp_path))


def test_random_crop_flip_shifts_and_mirrors_each_sample():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=2, flip=True, generator=generator)
    replay = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (2,), generator=replay)
    dx = torch.randint(0, 5, (2,), generator=replay)
    flips = torch.rand(2, generator=replay) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        expected = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        if flips[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected)


def test_random_crop_can_mirror_the_border_instead_of_zero_padding():
    images = torch.arange(1, 1 + 3 * 8 * 8, dtype=torch.uint8).view(1, 3, 8, 8)
    zeros = random_crop_flip(images, 2, False, torch.Generator().manual_seed(3))
    mirrored = random_crop_flip(images, 2, False, torch.Generator().manual_seed(3), fill="reflect")
    replay = torch.Generator().manual_seed(3)
    dy, dx = (int(torch.randint(0, 5, (1,), generator=replay)) for _ in range(2))
    assert (dy, dx) != (2, 2) and (zeros == 0).any() and not (mirrored == 0).any()
    expected = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")[0, :, dy : dy + 8, dx : dx + 8]
    assert torch.equal(mirrored[0], expected)


def test_train_batches_are_seeded_drop_last_and_normalized():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    a = TrainBatches(images, labels, 8, mean, std, seeds=[1])
    b = TrainBatches(images, labels, 8, mean, std, seeds=[1])
    c = TrainBatches(images, labels, 8, mean, std, seeds=[2])
    assert a.steps == 6
    batches_a, batches_b = list(a.epoch(3)), list(b.epoch(3))
    assert len(batches_a) == 6 and all(x.shape == (8, 3, 32, 32) for x, _ in batches_a)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))
    assert not torch.equal(batches_a[0][0], next(iter(c.epoch(3)))[0])
    assert not torch.equal(batches_a[0][0], next(iter(a.epoch(4)))[0])
    # without augmentation, batches are exactly the normalized images in a permuted order
    plain = TrainBatches(images, labels, 10, mean, std, seeds=[1], padding=0, flip=False)
    x = torch.cat([xb for xb, _ in plain.epoch(0)])
    y = torch.cat([yb for _, yb in plain.epoch(0)])
    reference = normalize(images, mean, std)
    for row, label in zip(x[:5], y[:5]):
        matches = [i for i in range(50) if torch.allclose(reference[i], row)]
        assert len(matches) == 1 and int(labels[matches[0]]) == int(label)


def test_packed_batches_hold_each_seed_exactly_as_it_would_be_alone():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    packed = TrainBatches(images, labels, 4, mean, std, seeds=[3, 7], memory_format=torch.channels_last)
    alone = [TrainBatches(images, labels, 4, mean, std, seeds=[seed]) for seed in (3, 7)]
    for (x, y), *solo in zip(packed.epoch(2), *(a.epoch(2) for a in alone)):
        assert x.shape == (4, 6, 32, 32) and y.shape == (4, 2) and x.is_contiguous(memory_format=torch.channels_last)
        for k, (xk, yk) in enumerate(solo):
            assert torch.equal(x[:, 3 * k : 3 * k + 3], xk) and torch.equal(y[:, k : k + 1], yk)


def test_an_epoch_is_filled_into_the_same_buffers_in_place():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    packed = TrainBatches(images, labels, 6, mean, std, seeds=[3, 7], memory_format=torch.channels_last)
    x, y = packed.buffers()
    addresses = (x.data_ptr(), y.data_ptr())
    assert x.shape == (36, 6, 32, 32) and y.shape == (36, 2)  # 6 steps of 6: the last 4 images dropped
    for epoch in (1, 2):
        packed.fill(epoch, x, y)
        assert (x.data_ptr(), y.data_ptr()) == addresses and x.is_contiguous(memory_format=torch.channels_last)
        for k, seed in enumerate((3, 7)):  # each seed's epoch in its own channels, its first 36 images
            images_k, labels_k = packed._one_seed(seed, epoch)
            assert torch.equal(x[:, 3 * k : 3 * k + 3], images_k[:36]) and torch.equal(y[:, k], labels_k[:36])
        first = list(packed.epoch(epoch, steps=2))  # an epoch's first batches alone: the same batches
        assert len(first) == 2 and all(torch.equal(xb, x[6 * i : 6 * i + 6]) for i, (xb, _) in enumerate(first))


def test_normalize_uses_mean_and_std_on_a_unit_scale():
    images = torch.full((1, 3, 2, 2), 153, dtype=torch.uint8)  # 0.6
    out = normalize(images, torch.tensor([0.5, 0.6, 0.7]), torch.tensor([0.1, 0.2, 0.5]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0, -0.2]))


def test_stratified_subset_balances_classes_and_is_fixed():
    labels = torch.arange(1000) % 10
    subset = stratified_subset(labels, 105, 10)
    assert subset.numel() == 105
    counts = torch.bincount(labels[subset], minlength=10).tolist()
    assert sorted(counts) == [10] * 5 + [11] * 5
    assert torch.equal(subset, stratified_subset(labels, 105, 10))


def test_eval_batches_cover_the_split_in_order():
    images = torch.randint(0, 256, (25, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(25) % 10
    batches = EvalBatches(images, labels, 10, torch.full((3,), 0.5), torch.full((3,), 0.25))
    assert batches.images == 25
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


@pytest.mark.slow
@pytest.mark.skipif(not Path("../shared/data/cifar10-jpeg/train").is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_real_cifar10_folder_loads_with_the_documented_statistics(tmp_path):
    """Uses the real dataset when present (decodes it into a temporary cache, never the user's)."""
    data = _folder(Path("../shared/data/cifar10-jpeg"), tmp_path)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    torch.testing.assert_close(data.mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4, rtol=0)
    torch.testing.assert_close(data.std, torch.tensor([0.2452, 0.2428, 0.2606]), atol=2e-4, rtol=0)


def test_corrupt_image_file_is_named_with_a_fix(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    (root / "train" / "cat" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*train/cat/0001.png.*Replace or remove"):
        _folder(root, tmp_path / "cache")


def test_changed_source_gets_a_new_cache_and_a_new_digest(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    first = _folder(root, tmp_path / "cache")
    make_image_folder(tmp_path / "data", train_per_class=3, test_per_class=1, seed=1)
    second = _folder(root, tmp_path / "cache")
    assert second.digest != first.digest and second.train_images.shape[0] == 30
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_the_digest_follows_the_content_not_the_copy_or_its_times(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=2, test_per_class=1)
    first = _folder(root, tmp_path / "cache")
    copy = shutil.copytree(root, tmp_path / "copy")
    os.utime(copy / "train" / "cat" / "0000.png", (1, 1))  # touched: another cache, the same content
    second = _folder(copy, tmp_path / "cache")
    assert second.digest == first.digest
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


@pytest.mark.slow
def test_two_processes_build_a_fresh_cache_once(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=30, test_per_class=5)
    script = (
        "import logging, os, sys, time; from types import SimpleNamespace as S; from normexp.data import load_cifar10;"
        "import normexp.data.sources as src; decode = src._decode_image;"
        f"marker = {str(tmp_path / 'someone-waits')!r};"
        # the builder decodes only once the other process has logged that it waits (an event, not a delay)
        "wait = lambda: next((True for _ in range(6000) if os.path.exists(marker) or time.sleep(0.01)), False);"
        "src._decode_image = lambda path: (wait(), decode(path))[1];"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "seen = logging.Handler(); "
        "seen.emit = lambda rec: 'waiting for it' in rec.getMessage() and open(marker, 'w').close();"
        "logging.getLogger().addHandler(seen);"
        f"d = load_cifar10('folder', S(cifar10_folder={str(root)!r}, cache_dir={str(tmp_path / 'cache')!r}, "
        "torchvision_root=None)); print('digest', d.digest)"
    )
    jobs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [job.communicate(timeout=120)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    assert sum(out.count("decoding 300 train images") for out in outputs) == 1, outputs
    assert sum(out.count("waiting for it") for out in outputs) == 1, outputs  # the lock, not luck, kept it once
    assert len({line for out in outputs for line in out.splitlines() if line.startswith("digest")}) == 1


def test_mean_fill_pads_each_channel_with_the_mean_colour():
    images = torch.full((2, 3, 6, 6), 200, dtype=torch.uint8)
    mean = torch.tensor([0.5, 0.25, 0.1])
    padded = pad(images, 2, "mean", mean)
    assert padded.shape == (2, 3, 10, 10) and torch.equal(padded[:, :, 2:8, 2:8], images)
    border = torch.ones(10, 10, dtype=torch.bool)
    border[2:8, 2:8] = False
    for channel, colour in enumerate((128, 64, 26)):
        assert (padded[:, channel][:, border] == colour).all()
    assert torch.equal(pad(images, 2, "zeros"), torch.nn.functional.pad(images, (2,) * 4))
