import gzip
import struct
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from gancli.config import DataConfig, DataName, Split
from gancli.data import Batches, Data, data_shape, load_data, read_idx, to_model
from gancli.errors import GancliError


def test_digits_are_bundled_and_resized():
    data = load_data(DataConfig(name=DataName.digits), seed=0)
    assert data.x.shape == (1797, 1, 28, 28) and data.x.dtype == torch.uint8
    assert data.labels.shape == (1797,) and set(data.labels.tolist()) == set(range(10))
    assert data.x.max() > 200  # strokes reach white
    x = to_model(data.x[:8])
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32


def test_digits_at_other_sizes():
    data = load_data(DataConfig(name=DataName.digits, image_size=16), seed=0)
    assert data.shape == (1, 16, 16) == data_shape(DataConfig(name=DataName.digits, image_size=16))


@pytest.mark.parametrize("name,centres,std", [(DataName.ring, 8, 0.01), (DataName.grid, 25, 0.05)])
def test_mixtures(name, centres, std):
    data = load_data(DataConfig(name=name, n=50_000, std=std), seed=0)
    assert data.x.shape == (50_000, 2) and data.centres.shape == (centres, 2)
    offsets = data.x - data.centres[data.labels]
    assert offsets.std().item() == pytest.approx(std, rel=0.05)
    counts = torch.bincount(data.labels, minlength=centres).float()
    assert counts.min() / counts.max() > 0.8  # every mode is used about equally
    if name is DataName.ring:
        assert data.centres.norm(dim=1).allclose(torch.ones(8))
    else:
        assert sorted(set(data.centres[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_mixture_is_seeded():
    a = load_data(DataConfig(name=DataName.ring, n=100), seed=1).x
    b = load_data(DataConfig(name=DataName.ring, n=100), seed=1).x
    c = load_data(DataConfig(name=DataName.ring, n=100), seed=2).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_local_idx_files(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28))
    labels = np.arange(20) % 10
    suffix = ".gz" if compress else ""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    data = load_data(DataConfig(name=DataName.mnist, root=str(tmp_path), split=Split.test), seed=0)
    assert data.x.shape == (20, 1, 28, 28)
    assert torch.equal(data.x[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert data.labels.tolist() == labels.tolist()


def test_truncated_idx_is_reported(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(path, np.zeros((4, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(GancliError, match="truncated"):
        read_idx(path)


def _mnist_files(root, images, labels, compress=True):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    paths = raw / f"t10k-images-idx3-ubyte{suffix}", raw / f"t10k-labels-idx1-ubyte{suffix}"
    for path, array in zip(paths, (images, labels)):
        _write_idx(path, array, compress)
    return paths


def _cut(path):  # a download that stopped part-way
    path.write_bytes(path.read_bytes()[:-40])


def _scramble(path):  # bytes changed inside the compressed stream
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(raw))


def _swap(images, labels):
    tmp = images.with_suffix(".tmp")
    images.rename(tmp), labels.rename(images), tmp.rename(labels)


def _wrong_dimension_count(path):  # an IDX header that says 1-D over an image array
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[3] = 1
    path.write_bytes(gzip.compress(bytes(raw)))


def _float_type(path):  # IDX of float32 (type 0x0D): not MNIST's bytes
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("damage, message", [
    (lambda images, labels: _cut(images), "t10k-images-idx3-ubyte.gz is a truncated gzip file"),
    (lambda images, labels: _scramble(images), "t10k-images-idx3-ubyte.gz is a corrupt gzip file"),
    (_swap, "holds labels and .* holds images: the two files are swapped"),
    (lambda images, labels: _wrong_dimension_count(images), "wrong magic number"),
    (lambda images, labels: _float_type(labels), "labels-idx1-ubyte.gz is not an IDX file of unsigned bytes"),
], ids=["truncated_gzip", "corrupt_gzip", "swapped", "wrong_dimensions", "not_bytes"])
def test_damaged_mnist_files_are_one_error_naming_the_file(tmp_path, damage, message):
    rng = np.random.default_rng(0)
    images, labels = _mnist_files(tmp_path, rng.integers(0, 256, size=(200, 28, 28)), np.arange(200) % 10)
    damage(images, labels)
    with pytest.raises(GancliError, match=message):
        load_data(DataConfig(name=DataName.mnist, root=str(tmp_path), split=Split.test), seed=0)


@pytest.mark.parametrize("n_images, n_labels", [(20, 18), (18, 20)])
def test_images_and_labels_of_different_counts_are_refused(tmp_path, n_images, n_labels):
    """Either way round: fewer labels would fail mid-run, more would train silently on a mismatch."""
    _mnist_files(tmp_path, np.zeros((n_images, 28, 28)), np.arange(n_labels) % 10, compress=False)
    with pytest.raises(GancliError, match=f"holds {n_images} images but .* holds {n_labels} labels"):
        load_data(DataConfig(name=DataName.mnist, root=str(tmp_path), split=Split.test), seed=0)


def test_missing_mnist_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr("gancli.datasets._download", lambda cfg: None)  # as if offline
    with pytest.raises(GancliError) as info:
        load_data(DataConfig(name=DataName.fashion_mnist, root=str(tmp_path)), seed=0)
    assert "train-images-idx3-ubyte" in str(info.value) and "FashionMNIST" in str(info.value)


def test_folder_of_images(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 50), (0, 0, 255)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_data(DataConfig(name=DataName.folder, path=str(tmp_path), image_size=16, channels=3), seed=0)
    assert data.x.shape == (2, 3, 16, 16)
    assert data.x[0, 0].float().mean() > 200 and data.x[0, 2].float().mean() < 50  # red a.png first
    grey = load_data(DataConfig(name=DataName.folder, path=str(tmp_path), image_size=8, channels=1), seed=0)
    assert grey.x.shape == (2, 1, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(GancliError, match="data.path"):
        load_data(DataConfig(name=DataName.folder, path=str(tmp_path / "absent")), seed=0)
    with pytest.raises(GancliError, match="no images"):
        load_data(DataConfig(name=DataName.folder, path=str(tmp_path)), seed=0)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(GancliError, match="broken.png"):
        load_data(DataConfig(name=DataName.folder, path=str(tmp_path)), seed=0)


def test_folder_skips_unusable_files_in_one_line_and_converts_odd_formats(tmp_path, caplog):
    grey = np.full((32, 32), 100, np.uint8)
    Image.fromarray(grey).save(tmp_path / "a_good.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "b_16bit.png")  # 16-bit grey, value 100
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 100, 100, 100] + [0] * 762)
    palette.save(tmp_path / "c_palette.png")
    Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(tmp_path / "d_transparent.png")  # white, see-through
    Image.new("L", (1, 1), 100).save(tmp_path / "e_1x1.png")
    good = (tmp_path / "a_good.png").read_bytes()
    (tmp_path / "f_truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "g_corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (tmp_path / "h_notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not the user's data, not counted
    with caplog.at_level("WARNING", logger="gancli.data"):
        data = load_data(DataConfig(name=DataName.folder, path=str(tmp_path), image_size=16), seed=0)
    assert data.x.shape == (4, 1, 16, 16)
    means = data.x.float().mean(dim=(1, 2, 3)).tolist()
    assert means[:3] == pytest.approx([100, 100, 100], abs=1)  # 16-bit kept its value, not clipped to white
    assert means[3] == 0  # transparent pixels are black, whatever colour lies under them
    (line,) = [r.getMessage() for r in caplog.records]
    assert "skipped 4 of 8 files" in line and "1 smaller than 8x8 pixels (e.g. e_1x1.png)" in line
    assert "2 unreadable or truncated" in line and "1 not an image file (e.g. h_notes.txt)" in line
    for name in ("a_good.png", "b_16bit.png", "c_palette.png", "d_transparent.png"):
        (tmp_path / name).unlink()
    with pytest.raises(GancliError, match="holds no usable image: 1 smaller than 8x8") as info:
        load_data(DataConfig(name=DataName.folder, path=str(tmp_path), image_size=16), seed=0)
    assert "\n" not in str(info.value)


def test_an_empty_data_path_is_refused():
    with pytest.raises(GancliError, match="data.path is empty"):
        DataConfig(name=DataName.folder, path="")


def test_digits_read_without_scikit_learn_match_its_loader():
    from sklearn.datasets import load_digits

    data = load_data(DataConfig(image_size=8), seed=0)
    bunch = load_digits()
    assert torch.equal(data.labels, torch.from_numpy(bunch.target).long())
    assert torch.equal(data.x[:, 0], torch.from_numpy(bunch.images).float().mul(255 / 16).round().to(torch.uint8))


def test_batches_cover_each_epoch_once_and_depend_only_on_the_index():
    from gancli.data import Data

    x = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)
    batches = Batches(Data(x=x), batch_size=3, seed=0, device=torch.device("cpu"))
    epoch = torch.cat([batches(k).x[:, 0] for k in range(3)])  # 3 batches of 3; one sample dropped
    assert len(set(epoch.tolist())) == 9
    fresh = Batches(Data(x=x), batch_size=3, seed=0, device=torch.device("cpu"))
    assert torch.equal(fresh(4).x, batches(4).x) and torch.equal(fresh(1).x, batches(1).x)
    assert not torch.equal(batches(0).x, batches(3).x)
    assert batches(0).c is None  # no labels unless asked  # a new permutation next epoch


@pytest.mark.parametrize("streamed", [False, True])
def test_ranks_take_disjoint_slices_of_the_single_process_global_batch(streamed):
    from gancli.data import Data, StreamBatches

    x = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 2)
    cpu = torch.device("cpu")
    cls = StreamBatches if streamed else Batches
    threads = {"threaded": True} if streamed else {}  # points from memory, through the reader thread
    whole = Batches(Data(x=x), batch_size=6, seed=3, device=cpu)  # one process, the global batch
    ranks = [cls(Data(x=x), batch_size=2, seed=3, device=cpu, rank=r, world_size=3, **threads) for r in range(3)]
    for k in range(5):  # across an epoch boundary (3 global batches per epoch)
        slices = [b(k).x[:, 0] for b in ranks]
        assert torch.equal(torch.cat(slices), whole(k).x[:, 0])
        assert len(set(torch.cat(slices).tolist())) == 6
    for b in ranks:
        b.close()
    with pytest.raises(GancliError, match=r"train.batch_size=8 x 3 processes = 24 is larger"):
        cls(Data(x=x), batch_size=8, seed=0, device=cpu, rank=0, world_size=3)


@pytest.mark.parametrize("threaded", [False, True], ids=["read-by-the-step", "reader-thread"])
@pytest.mark.parametrize("from_file", [False, True], ids=["memory", "file"])
def test_streamed_batches_equal_the_device_resident_ones_whatever_order_they_are_asked_in(tmp_path, from_file,
                                                                                           threaded):
    from gancli.data import Data, StreamBatches

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 8, 8), generator=gen, dtype=torch.uint8)
    file = None
    if from_file:  # a prepared set's pixel file: the rows of x, no header
        file = tmp_path / "images.u8"
        x.numpy().tofile(file)
    data = Data(x=x, labels=torch.arange(50) % 5, classes=list("abcde"), file=file)
    cpu = torch.device("cpu")
    resident = Batches(data, 7, seed=3, device=cpu, labels=True, xflip=True)
    # the reader thread is what a GPU gets; the CPU reads in the step's thread
    streamed = StreamBatches(data, 7, seed=3, device=cpu, labels=True, xflip=True, threaded=threaded)
    assert streamed.threaded is threaded
    # in order across epochs (7 batches each), then as a rollback and a resume ask: back, and ahead
    for k in [*range(16), 4, 5, 6, 2, 30, 31, 0]:
        a, b = resident(k), streamed(k)
        assert torch.equal(a.x, b.x) and torch.equal(a.c, b.c), f"batch {k} differs"
    streamed.close()
    assert not any(t.name == "gancli-data-reader" for t in threading.enumerate())


def test_a_prepared_file_cut_short_is_one_line_when_streamed(tmp_path):
    from gancli.data import Data, StreamBatches

    x = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    file = tmp_path / "images.u8"
    x[:10].numpy().tofile(file)  # half of what the manifest promises
    for threaded in (False, True):
        streamed = StreamBatches(Data(x=x, file=file), 20, seed=0, device=torch.device("cpu"), threaded=threaded)
        with pytest.raises(GancliError, match=r"images.u8 is shorter than its manifest says.*delete .* and run again"):
            streamed(0)
        streamed.close()


def test_data_on_device_auto_keeps_what_fits_its_budget_and_streams_the_rest():
    from gancli.data import Data, on_device

    data = Data(x=torch.zeros(1000, 3, 100, 100, dtype=torch.uint8))  # 0.03 GB
    assert on_device(DataConfig(), data) == (True, "data.on_device=auto: 0.03 GB within data.on_device_gb=4")
    assert on_device(DataConfig(on_device_gb=0.01), data) == (
        False, "data.on_device=auto: 0.03 GB over data.on_device_gb=0.01")
    assert on_device(DataConfig(on_device="false"), data) == (False, "data.on_device=false")
    assert on_device(DataConfig(on_device=True), data) == (True, "data.on_device=true")  # as the command line gives it
    with pytest.raises(GancliError, match=r"data.on_device=maybe is not allowed: auto, true or false"):
        DataConfig(on_device="maybe")


@pytest.mark.parametrize("loader", [False, True])
def test_labelled_batches_keep_each_sample_with_its_class(loader):
    from gancli.data import Data, LoaderBatches

    x = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 2)
    data = Data(x=x, labels=torch.arange(12) % 4)
    cls = LoaderBatches if loader else Batches
    batches = cls(data, batch_size=4, seed=1, device=torch.device("cpu"), labels=True)
    for k in range(4):
        batch = batches(k)
        assert torch.equal(batch.c, batch.x[:, 0].long() % 4)
    with pytest.raises(GancliError, match="no class labels"):
        cls(Data(x=x), batch_size=4, seed=1, device=torch.device("cpu"), labels=True)


def test_batch_larger_than_data():
    from gancli.data import Data

    with pytest.raises(GancliError, match="train.batch_size"):
        Batches(Data(x=torch.zeros(4, 2)), batch_size=8, seed=0, device=torch.device("cpu"))


def test_stacked_mnist_from_local_files(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(30, 28, 28))
    labels = np.arange(30) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, compress=True)
    cfg = DataConfig(name=DataName.stacked_mnist, root=str(tmp_path), split=Split.test, channels=3, n=50)
    data = load_data(cfg, seed=0)
    assert data.x.shape == (50, 3, 28, 28) and data.labels.shape == (50,)
    base = torch.from_numpy(images.astype(np.uint8))
    for image, mode in zip(data.x[:5], data.labels[:5].tolist()):
        digits = (mode // 100, mode // 10 % 10, mode % 10)
        for channel, digit in enumerate(digits):
            source = [i for i in range(30) if torch.equal(base[i], image[channel])]
            assert source and labels[source[0]] == digit  # each channel is a real digit with its label


def test_the_data_sets_are_one_table():
    """The one list of the data sets in the tests: each is one table entry with its YAML, and
    the config's enum is built from the table."""
    from pathlib import Path

    from gancli.datasets import DATASETS

    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "folder", "ring", "grid", "fake",
                             "stacked_mnist"}
    configs = Path(__file__).resolve().parents[1] / "configs" / "data"
    assert sorted(p.stem for p in configs.glob("*.yaml")) == sorted(DATASETS) == sorted(d.value for d in DataName)
    for name, ds in DATASETS.items():
        assert ds.points == (data_shape(DataConfig(name=DataName[name])) == (2,))


def _left_white(height, width):
    """An image white on its left half, black on its right: which way up and round it is shows."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, : width // 2] = 255
    return pixels


def test_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait on its side with EXIF orientation 6 (turn 90 degrees clockwise to
    view); it trains upright."""
    stored = Image.fromarray(_left_white(32, 48))  # landscape as stored: white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise
    stored.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    data = load_data(DataConfig(name=DataName.folder, path=str(tmp_path), image_size=16), seed=0)
    image = data.x[0, 0].float()
    # upright, the stored left side is on top: a white top half, a black bottom half
    assert image[:6].mean() > 200 and image[-6:].mean() < 50


def test_symlinked_class_subfolders_are_followed_and_a_loop_is_not(tmp_path):
    elsewhere, photos = tmp_path / "elsewhere" / "dogs", tmp_path / "photos"
    elsewhere.mkdir(parents=True)
    (photos / "cats").mkdir(parents=True)
    Image.new("L", (16, 16), 10).save(photos / "cats" / "a.png")
    Image.new("L", (16, 16), 200).save(elsewhere / "b.png")
    (photos / "dogs").symlink_to(elsewhere)
    (photos / "cats" / "again").symlink_to(photos)  # a loop back to the top
    data = load_data(DataConfig(name=DataName.folder, path=str(photos), image_size=8), seed=0)
    assert data.classes == ["cats", "dogs"] and sorted(data.labels.tolist()) == [0, 1]
    assert len(data.x) == 2


def test_xflip_mirrors_about_half_of_each_batch_and_is_the_same_on_a_rerun():
    images = torch.from_numpy(_left_white(8, 8))[None, None].repeat(256, 1, 1, 1)  # (256, 1, 8, 8)
    data = Data(x=images)
    flips = Batches(data, 64, seed=3, device=torch.device("cpu"), xflip=True)
    plain = Batches(data, 64, seed=3, device=torch.device("cpu"))
    mirrored = [flips(k).x[:, 0, 0, 0] < 0 for k in range(8)]  # the left column black: mirrored
    share = torch.cat(mirrored).float().mean().item()
    assert 0.4 < share < 0.6  # 512 fair coins: 0.5 +- 0.022
    assert all(0 < m.sum() < 64 for m in mirrored)  # per sample, not per batch
    assert not any((plain(k).x[:, 0, 0, 0] < 0).any() for k in range(8))  # off: as before
    again = Batches(data, 64, seed=3, device=torch.device("cpu"), xflip=True)
    assert all(torch.equal(again(k).x, flips(k).x) for k in (5, 0, 7))  # batch k depends on (seed, k) alone


def test_xflip_is_for_images():
    with pytest.raises(GancliError, match="data.xflip mirrors images"):
        load_data(DataConfig(name=DataName.ring, xflip=True), seed=0)
