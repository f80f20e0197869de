import pickle

import pytest
import torch

from gancli import checkpoint, runfolder
from gancli.errors import GancliError


def _state():
    return {"step": 7, "G": {"w": torch.ones(2)}, "config": {"model": {"name": "mlp"}}, "data_shape": [2]}


def test_round_trip_is_plain_data(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.save(_state(), path)
    state = checkpoint.load(path)
    assert state["step"] == 7 and torch.equal(state["G"]["w"], torch.ones(2))
    assert state["format"] == checkpoint.FORMAT
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert runfolder.find_checkpoint(tmp_path / "run") == path  # a run folder means its last checkpoint
    assert runfolder.run_dir_of(path) == tmp_path / "run"


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(_state(), path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(GancliError, match=f"cannot write {path} "):
        checkpoint.save(_state(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing(tmp_path):
    with pytest.raises(GancliError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(GancliError, match="no checkpoint in"):
        runfolder.find_checkpoint(tmp_path)


def test_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GancliError, match="corrupt"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(GancliError, match="corrupt"):
        checkpoint.load(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_files(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(GancliError, match="not a gancli checkpoint"):
        checkpoint.load(plain)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: never unpickled
    with pytest.raises(GancliError, match="not a gancli checkpoint"):
        checkpoint.load(pickled)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(GancliError):
        checkpoint.load(raw)
