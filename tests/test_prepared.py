"""Prepared data sets: a folder decoded once into data.cache_dir, reused, prepared again when the
folder changes, never left half-written by a kill or a full disk."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TIMEOUT, child_env, run_gancli
from gancli import checkpoint, decode, prepared
from gancli.config import DataConfig, DataName
from gancli.data import load_data
from gancli.errors import GancliError


def _photos(folder, n, size=40, start=0):
    """`n` small photographs: crops of the two that ship with scikit-learn, as JPEGs."""
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    images = load_sample_images().images
    for i in range(start, start + n):
        photo = images[i % 2]
        y, x = (37 * i) % (photo.shape[0] - size), (53 * i) % (photo.shape[1] - size)
        Image.fromarray(photo[y : y + size, x : x + size]).save(folder / f"{i:04d}.jpg", quality=90)


def _config(folder, cache, size=16):
    return DataConfig(name=DataName.folder, path=str(folder), image_size=size, channels=3, cache_dir=str(cache))


def _sets(cache):
    return sorted(p.name for p in cache.iterdir() if (p / prepared.MANIFEST).is_file())


def test_a_folder_is_prepared_once_and_prepared_again_when_it_changes(tmp_path, caplog):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(photos, 6)
    with caplog.at_level("INFO", logger="gancli.data"):
        first = load_data(_config(photos, cache), seed=0)
    assert first.x.shape == (6, 3, 16, 16) and first.x.dtype == torch.uint8
    assert any("preparing 6 files at 16x16 once" in r.getMessage() for r in caplog.records)
    (name,) = _sets(cache)

    caplog.clear()
    with caplog.at_level("INFO", logger="gancli.data"):
        again = load_data(_config(photos, cache), seed=0)
    assert torch.equal(again.x, first.x) and _sets(cache) == [name]
    assert not any("prepar" in r.getMessage() for r in caplog.records)  # reused, not decoded again

    _photos(photos, 1, start=6)  # one added
    (photos / "0000.jpg").unlink()  # one removed
    Image.new("RGB", (40, 40), (255, 0, 0)).save(photos / "0001.jpg")  # one modified: now red
    os.utime(photos / "0001.jpg", ns=(1, 1))
    caplog.clear()
    with caplog.at_level("INFO", logger="gancli.data"):
        changed = load_data(_config(photos, cache), seed=0)
    assert any("changed since it was prepared (1 files added, 1 removed, 1 modified)" in r.getMessage()
               for r in caplog.records)
    assert changed.x.shape[0] == 6 and changed.x[0, 0].float().mean() > 240  # 0001.jpg, red, comes first now
    assert len(_sets(cache)) == 1 and _sets(cache) != [name]  # the stale set is gone

    load_data(_config(photos, cache, size=8), seed=0)  # another size: another set, beside the first
    assert len(_sets(cache)) == 2


def test_many_files_are_decoded_on_every_core_in_order(tmp_path):
    """Enough files for worker processes: the same pixels, in the same order, as one by one."""
    photos = tmp_path / "photos"
    _photos(photos, 70)
    data = load_data(_config(photos, tmp_path / "cache"), seed=0)
    one_by_one = np.stack([decode.decode(path, 16, 3) for path in sorted(photos.iterdir())])
    assert np.array_equal(data.x.numpy(), one_by_one)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_matches_the_full_decode(tmp_path):
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]  # 427 x 640
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    drafted = decode.square(decode.read_image(tmp_path / "photo.jpg", "RGB", draft=64), 64)
    full = decode.square(decode.read_image(tmp_path / "photo.jpg", "RGB"), 64)
    error = drafted.astype(float) - full.astype(float)
    assert 0 < np.abs(error).mean() < 1.5  # decoded at a quarter of the size, not in full
    assert 10 * np.log10(255**2 / np.mean(error**2)) > 38  # dB: the same image to the eye


def _prepare_in_a_child(photos, cache, setup: str) -> subprocess.Popen:
    code = (f"import sys\n{setup}\n"
            "from gancli.config import DataConfig, DataName\n"
            "from gancli.data import load_data\n"
            "from gancli.errors import GancliError\n"
            f"try:\n    load_data(DataConfig(name=DataName.folder, path={str(photos)!r}, image_size=16, channels=3, "
            f"cache_dir={str(cache)!r}), seed=0)\n"
            "except GancliError as e:\n    print(e)\n    sys.exit(2)\n")
    return subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_prepare_killed_part_way_leaves_nothing_taken_for_complete(tmp_path):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(photos, 5)
    # the child decodes two files, then says so and hangs on the third: killed there, whatever
    # the machine's speed
    marker = tmp_path / "hanging"
    hang = ("import time, gancli.decode as p; d = p.decode_into; n = [0]\n"
            "def slow(job):\n    n[0] += 1\n    if n[0] > 2:\n"
            f"        open({str(marker)!r}, 'w').close(); time.sleep(3600)\n    return d(job)\n"
            "p.decode_into = slow")
    child = _prepare_in_a_child(photos, cache, hang)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0]
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _sets(cache) == [] and len(list(cache.glob("*.tmp-*"))) == 1  # half-written, and named so
    data = load_data(_config(photos, cache), seed=0)  # the next run prepares it whole
    assert data.x.shape == (5, 3, 16, 16) and len(_sets(cache)) == 1 and not list(cache.glob("*.tmp-*"))


def test_a_write_that_fails_part_way_is_one_line_and_leaves_nothing(tmp_path):
    """The operating system refuses the write past a file size limit (as a full disk would)."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(photos, 8)
    limit = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))")  # bytes: not even 3 images of 768
    child = _prepare_in_a_child(photos, cache, limit)
    out = child.communicate(timeout=TIMEOUT)[0]
    assert child.returncode == 2, out
    assert out.strip().splitlines()[-1].startswith(f"cannot write the prepared data set in {cache}")
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no set, no folder


def test_an_unwritable_cache_is_one_line(tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, 2)
    (tmp_path / "afile").write_text("a file, not a folder")
    with pytest.raises(GancliError, match="cannot write the prepared data set in .*data.cache_dir"):
        load_data(_config(photos, tmp_path / "afile" / "cache"), seed=0)


def test_gancli_prepare_on_the_command_line(tmp_path, monkeypatch, capsys):
    photos, cache = tmp_path / "my phötos", tmp_path / "cache"
    _photos(photos, 6)
    proc = run_gancli("prepare", f"data.path={photos}", "data.image_size=16", f"data.cache_dir={cache}", cwd=tmp_path)
    assert "is prepared: 6 images at 16x16, 0 files skipped" in proc.stdout
    assert len(_sets(cache)) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "my phötos"]
    from gancli import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["prepare", "data=digits"])
    assert info.value.code == 2 and "gancli prepare prepares a folder of images" in capsys.readouterr().err


def test_a_wide_image_is_cropped_by_default_or_padded(tmp_path):
    from gancli.config import Fit

    photos = tmp_path / "photos"
    photos.mkdir()
    wide = np.full((20, 40), 200, np.uint8)
    wide[:, :10] = 50  # a dark left quarter, which a centre crop cuts off
    Image.fromarray(wide).save(photos / "wide.png")
    config = DataConfig(name=DataName.folder, path=str(photos), image_size=16, channels=1,
                        cache_dir=str(tmp_path / "c"))
    cropped = load_data(config, seed=0).x[0, 0]
    assert cropped.min() >= 180  # the centre: bright (the resize blurs the dark edge by a pixel)
    config.fit = Fit.pad
    padded = load_data(config, seed=0).x[0, 0]  # 16 x 8 of image, centred on black
    assert padded[:4].max() == 0 and padded[12:].max() == 0 and padded[4:12, 0].float().mean() < 80
    assert len(_sets(tmp_path / "c")) == 2  # two fits, two prepared sets


def _zip(folder, path, labels=None):
    import json
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for image in sorted(folder.iterdir()):
            archive.write(image, f"00000/{image.name}")
        if labels is not None:
            archive.writestr("dataset.json", json.dumps({"labels": labels}))


def test_zip_archives_train_as_they_are_with_or_without_labels(tmp_path):
    """StyleGAN2-ADA's dataset_tool layout: images in the archive, an optional dataset.json."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(photos, 4)
    from_folder = load_data(_config(photos, cache), seed=0)
    _zip(photos, tmp_path / "plain.zip")
    plain = load_data(_config(tmp_path / "plain.zip", cache), seed=0)
    assert torch.equal(plain.x, from_folder.x) and plain.labels is None
    names = [f"00000/{p.name}" for p in sorted(photos.iterdir())]
    _zip(photos, tmp_path / "labelled.zip", labels=[[name, 7 if i % 2 else 3] for i, name in enumerate(names)])
    labelled = load_data(_config(tmp_path / "labelled.zip", cache), seed=0)
    assert labelled.classes == ["3", "7"] and labelled.labels.tolist() == [0, 1, 0, 1]
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(GancliError, match="broken.zip is not a readable zip archive"):
        load_data(_config(tmp_path / "broken.zip", cache), seed=0)


def test_a_streamed_run_resumed_at_step_20_ends_with_the_weights_of_40_straight_steps(tmp_path, caplog):
    from gancli.train import train
    from test_config import compose_train

    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _photos(photos, 40)

    def run(name, steps, *extra):
        cfg = compose_train("experiment=none", "device=cpu", "data=folder", f"data.path={photos}",
                            f"data.cache_dir={cache}", "data.image_size=16", "data.channels=3", "data.xflip=true",
                            "model=dcgan", "model.g_width=8", "model.d_width=8", "train.batch_size=8",
                            f"train.steps={steps}", "train.log_every=10", "train.sample_every=0",
                            "train.ckpt_every=0", *extra)
        train(cfg, tmp_path / name)
        return checkpoint.load(tmp_path / name / "checkpoints" / "last.pt")

    with caplog.at_level("INFO", logger="gancli.train"):
        straight = run("straight", 40, "data.on_device=false")
    assert any("streamed from" in r.getMessage() and "images.u8, each batch read by the step" in r.getMessage()
               for r in caplog.records)
    run("resumed", 20, "data.on_device=false")
    resumed = run("resumed", 40, "data.on_device=false", "train.resume=auto")
    resident = run("resident", 40, "data.on_device=true")  # 5 epochs of 5 batches: the same model
    assert straight["step"] == resumed["step"] == 40
    for other in (resumed, resident):
        for net in ("G", "D"):
            assert all(torch.equal(value, other[net][key]) for key, value in straight[net].items())
