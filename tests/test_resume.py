"""Resumable training: a crash in level 3 leaves level checkpoints; `train --resume` trains only what is missing
and ends with the very model an uninterrupted run writes. A corrupted checkpoint falls back to the one before;
a checkpoint of another config is refused."""
import json
import shutil

import numpy as np
import pytest

import sid_spark.spark.train as train_mod
from sid_spark.cli import main
from sid_spark.errors import ArtifactError
from sid_spark.tokenizer import ResidualKMeansModel
from tests.conftest import make_df

REAL_TRAIN_LEVEL = train_mod.train_level
CONF = "levels: 3\ncodebook_size: 4\nbalance: none\nmax_iter: 2\nseed: 7\n"


class CrashAt:
    """Wraps train_level: records which levels (0-based) were trained, and raises when reaching `crash_level`."""

    def __init__(self, crash_level=None):
        self.crash_level, self.levels = crash_level, []

    def __call__(self, sample, frozen, init_x, cfg, level, *args, **kwargs):
        self.levels.append(level)
        if level == self.crash_level:
            raise RuntimeError("simulated crash: executor lost for good")
        return REAL_TRAIN_LEVEL(sample, frozen, init_x, cfg, level, *args, **kwargs)


@pytest.fixture(scope="module")
def setup(spark, blobs, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_df(spark, blobs[::4], partitions=3).write.parquet(str(root / "catalog"))
    (root / "c.yaml").write_text(CONF)
    assert main(train_args(root, "clean")) == 0
    return root


def train_args(root, model, *extra):
    return ["train", "--input", str(root / "catalog"), "--model", str(root / model), "--config",
            str(root / "c.yaml"), *extra]


def test_resume_after_a_crash_ends_with_the_uninterrupted_model(setup, monkeypatch, capsys):
    root = setup
    crash = CrashAt(crash_level=2)
    monkeypatch.setattr(train_mod, "train_level", crash)
    assert main(train_args(root, "m")) == 1
    assert "simulated crash" in capsys.readouterr().err
    assert crash.levels == [0, 1, 2]
    ckpts = root / "m" / "_checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["level_1", "level_2"]
    assert json.loads((ckpts / "level_2" / "manifest.json").read_text())["levels_done"] == 2
    with pytest.raises(ArtifactError, match="incomplete"):
        ResidualKMeansModel.load(str(root / "m"))

    # A second copy whose newest checkpoint was corrupted (a crash while the disk filled up).
    shutil.copytree(root / "m", root / "m_corrupt")
    blob = root / "m_corrupt" / "_checkpoints" / "level_2" / "codebooks.npz"
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))

    resumed = CrashAt()
    monkeypatch.setattr(train_mod, "train_level", resumed)
    assert main(train_args(root, "m", "--resume")) == 0
    assert resumed.levels == [2]  # levels 1 and 2 came from the checkpoint

    fallback = CrashAt()
    monkeypatch.setattr(train_mod, "train_level", fallback)
    assert main(train_args(root, "m_corrupt", "--resume")) == 0
    assert fallback.levels == [1, 2]  # level_2 failed its checksum: resumed from level_1

    clean = ResidualKMeansModel.load(str(root / "clean"))
    for name in ("m", "m_corrupt"):
        got = ResidualKMeansModel.load(str(root / name))
        assert got.model_id == clean.model_id
        for a, b in zip(got.codebooks, clean.codebooks):
            np.testing.assert_array_equal(a, b)
        assert [h["mse"] for h in got.summary["history"]] == [h["mse"] for h in clean.summary["history"]]
        assert not (root / name / "_checkpoints").exists()


def test_resume_refuses_a_checkpoint_of_another_config(setup, monkeypatch, capsys):
    root = setup
    monkeypatch.setattr(train_mod, "train_level", CrashAt(crash_level=1))
    assert main(train_args(root, "m2")) == 1
    capsys.readouterr()
    called = CrashAt()
    monkeypatch.setattr(train_mod, "train_level", called)
    assert main(train_args(root, "m2", "--resume", "--set", "seed=8")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "'seed'" in err
    assert called.levels == []
    # Without --resume the same command starts over and drops the old checkpoints.
    assert main(train_args(root, "m2", "--set", "levels=1")) == 0
    assert called.levels == [0]
    assert ResidualKMeansModel.load(str(root / "m2")).levels == 1


def test_resume_without_checkpoint_trains_from_scratch(setup, monkeypatch):
    root = setup
    called = CrashAt()
    monkeypatch.setattr(train_mod, "train_level", called)
    assert main(train_args(root, "m3", "--resume", "--set", "levels=1")) == 0
    assert called.levels == [0]
    clean = ResidualKMeansModel.load(str(root / "clean"))
    np.testing.assert_array_equal(ResidualKMeansModel.load(str(root / "m3")).codebooks[0], clean.codebooks[0])
