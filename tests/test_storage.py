"""Production storage (issue 13): every file through Hadoop's FileSystem, so a non-`file` scheme works end to end
and nothing lands in the driver's working directory; outputs never replace what is not ours; concurrent writers
never mix or delete each other's work; a mostly rejected catalog keeps the previous output."""
import hashlib
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import sid_spark.spark.train as train_mod
from sid_spark import storage
from sid_spark.cli import main
from sid_spark.errors import InputError
from sid_spark.spark.io import MANIFEST, commit_output
from sid_spark.tokenizer import ResidualKMeansModel, ResidualKMeansTokenizer
from tests.conftest import make_df

MOUNT = "sidtest"
_MOUNTS = itertools.count()
CONF = "levels: 2\ncodebook_size: 4\nbalance: none\nmax_iter: 2\nseed: 3\n"


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def everything(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def small(spark, blobs, tmp_path_factory):
    """A trained model and two tiny catalogs (200 rows, 6-d) plus a wrong-dimension one, as local folders."""
    root = tmp_path_factory.mktemp("storage")
    make_df(spark, blobs[::16], partitions=2).write.parquet(str(root / "v1"))
    make_df(spark, blobs[1::16], partitions=2).write.parquet(str(root / "v1b"))  # same size, other content
    make_df(spark, np.ones((200, 5), np.float32), partitions=1).write.parquet(str(root / "wrong_dim"))
    (root / "c.yaml").write_text(CONF)
    model = ResidualKMeansTokenizer(levels=2, codebookSize=4, seed=2, balance="none", max_iter=2) \
        .fit(spark.read.parquet(str(root / "v1")))
    model.save(str(root / "model"))
    return root


@pytest.fixture
def viewfs(spark, tmp_path):
    """`viewfs://sidtest<n>/data` mapped onto tmp_path/mounted (a Hadoop ViewFileSystem mount table, set at
    runtime; a new mount name each time, since Hadoop caches one filesystem per scheme and authority)."""
    target = tmp_path / "mounted"
    target.mkdir()
    name = f"{MOUNT}{next(_MOUNTS)}"
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    conf.set(f"fs.viewfs.mounttable.{name}.link./data", target.as_uri())
    yield f"viewfs://{name}/data", target
    conf.unset(f"fs.viewfs.mounttable.{name}.link./data")


def test_storage_round_trips_bytes_text_listing_on_viewfs(spark, viewfs):
    base, target = viewfs
    blob = bytes(range(256)) * 40000  # 10 MB: crosses the py4j gateway in two chunks
    storage.write_bytes(f"{base}/d/a.bin", blob)
    storage.write_text(f"{base}/d/b.txt", "héllo")
    assert (target / "d" / "a.bin").read_bytes() == blob
    assert storage.read_bytes(f"{base}/d/a.bin") == blob and storage.read_text(f"{base}/d/b.txt") == "héllo"
    assert storage.list_names(f"{base}/d") == ["a.bin", "b.txt"] and storage.is_dir(f"{base}/d")
    assert storage.rename(f"{base}/d/b.txt", f"{base}/d/c.txt") and storage.glob(f"{base}/d/*.txt")[0].endswith("c.txt")
    assert storage.read_text(f"{base}/d/missing") is None
    # A viewfs path and the folder it maps to are one place.
    with pytest.raises(InputError, match="lies inside"):
        storage.check_no_overlap(f"{base}/d/out", target.as_uri() + "/d")


def test_file_uri_model_goes_to_its_folder_not_a_local_file_colon_folder(spark, small, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model_uri = (tmp_path / "x" / "model").as_uri()  # file:///…/x/model
    assert main(["train", "--input", str(small / "v1"), "--model", model_uri, "--config", str(small / "c.yaml")]) == 0
    assert (tmp_path / "x" / "model" / "manifest.json").is_file()
    assert everything(cwd) == []
    assert ResidualKMeansModel.load(model_uri).levels == 2


def test_train_encode_evaluate_and_resume_on_viewfs_nothing_in_cwd(spark, small, viewfs, tmp_path, monkeypatch,
                                                                  capsys):
    base, target = viewfs
    import shutil

    shutil.copytree(small / "v1", target / "v1")
    shutil.copytree(small / "v1b", target / "v1b")
    shutil.copy(small / "c.yaml", target / "c.yaml")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    conf = f"{base}/c.yaml"  # the config file too is read through Hadoop's FileSystem
    assert main(["train", "--input", f"{base}/v1", "--model", f"{base}/model", "--config", f"{base}/none.yaml"]) == 2
    assert "none.yaml' does not exist" in capsys.readouterr().err
    assert main(["train", "--input", f"{base}/v1", "--model", f"{base}/model", "--config", conf]) == 0
    assert ResidualKMeansModel.load(f"{base}/model").codebooks[0].shape[0] == 4  # c.yaml's codebook_size
    assert main(["encode", "--input", f"{base}/v1", "--model", f"{base}/model", "--output", f"{base}/sids"]) == 0
    assert main(["evaluate", "--sids", f"{base}/sids", "--model", f"{base}/model", "--embeddings", f"{base}/v1",
                 "--output", f"{base}/eval", "--set", "knn_queries=20"]) == 0
    assert (target / "model" / "manifest.json").is_file() and (target / "model" / "codebooks.npz").is_file()
    sids = json.loads((target / "sids" / MANIFEST).read_text())
    assert sids["items_read"] == 200 and sids["items_encoded"] == 200
    metrics = json.loads((target / "eval" / "metrics.json").read_text())
    assert metrics["n_items"] == 200 and (target / "eval" / "report.html").is_file()
    assert everything(cwd) == []
    assert not [p for p in target.iterdir() if ".staging-" in p.name]  # no lease, checkpoint or staging left

    # Resume on viewfs: a crash in level 2 leaves the level-1 checkpoint; --resume trains level 2 only and ends
    # with the uninterrupted model. A different input of the same size is refused.
    real, seen = train_mod.train_level, []

    def crash(sample, frozen, init_x, cfg, level, *a, **k):
        seen.append(level)
        if level == 1 and len(seen) == 2:
            raise RuntimeError("simulated crash")
        return real(sample, frozen, init_x, cfg, level, *a, **k)

    monkeypatch.setattr(train_mod, "train_level", crash)
    assert main(["train", "--input", f"{base}/v1", "--model", f"{base}/m2", "--config", conf]) == 1
    assert (target / "m2" / "_checkpoints" / "level_1" / "manifest.json").is_file()
    capsys.readouterr()
    assert main(["train", "--input", f"{base}/v1b", "--model", f"{base}/m2", "--config", conf, "--resume"]) == 2
    assert "another input of the same size" in capsys.readouterr().err
    assert main(["train", "--input", f"{base}/v1", "--model", f"{base}/m2", "--config", conf, "--resume"]) == 0
    assert seen == [0, 1, 1]
    clean, resumed = ResidualKMeansModel.load(f"{base}/model"), ResidualKMeansModel.load(f"{base}/m2")
    assert resumed.model_id == clean.model_id
    assert everything(cwd) == []


def encode(small, out, catalog="v1", *extra):
    return main(["encode", "--input", str(small / catalog), "--model", str(small / "model"), "--output", str(out),
                 *extra])


def test_refusals_leave_everything_as_it_was(spark, small, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("not ours")
    a_file = tmp_path / "a_file"
    a_file.write_text("also not ours")
    evaluation = tmp_path / "eval"
    good = tmp_path / "sids"
    assert encode(small, good) == 0
    assert main(["evaluate", "--sids", str(good), "--output", str(evaluation), "--set", "knn_queries=10"]) == 0
    catalog, model = snapshot(small / "v1"), snapshot(small / "model")
    before = {p: snapshot(p) for p in (foreign, good, evaluation)}
    capsys.readouterr()
    cases = [(foreign, "not a complete sid_spark output"), (a_file, "is a file"),
             (small / "v1", "refusing to write over an input"),  # output = input
             (small / "v1" / "nested", "lies inside"),  # output inside the input
             (small, "contains"),  # output a parent of the input and the model
             (evaluation, "'evaluation' output, not 'sids'")]
    for out, message in cases:
        assert encode(small, out) == 2, out
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (out, err)
    assert main(["train", "--input", str(small / "v1"), "--model", str(foreign), "--config",
                 str(small / "c.yaml")]) == 2
    assert "not a complete sid_spark output" in capsys.readouterr().err
    assert main(["evaluate", "--sids", str(good), "--output", str(good)]) == 2
    assert a_file.read_text() == "also not ours" and not (small / "v1" / "nested").exists()
    assert snapshot(small / "v1") == catalog and snapshot(small / "model") == model
    assert {p: snapshot(p) for p in (foreign, good, evaluation)} == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_mostly_rejected_catalog_keeps_the_previous_output(spark, small, tmp_path, capsys):
    out = tmp_path / "sids"
    assert encode(small, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert encode(small, out, "wrong_dim") == 2  # an embedding-model change: every row has another dimension
    err = capsys.readouterr().err
    assert "200 of 200 items rejected" in err and "max_reject_share" in err
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    # The limit is a config key: with max_reject_share=1 the same catalog is written (all of it rejected).
    assert encode(small, out, "wrong_dim", "--set", "max_reject_share=1.0") == 0
    assert json.loads((out / MANIFEST).read_text())["items_rejected"] == 200


def rows_writer(spark, rows, during=None):
    def write(staging):
        spark.createDataFrame([(r,) for r in rows], "x long").coalesce(1).write.parquet(staging)
        if during is not None:
            during(staging)
        return {"kind": "test_rows", "rows": len(rows)}
    return write


def read_rows(spark, out):
    return sorted(r["x"] for r in spark.read.parquet(str(out)).collect())


def test_a_second_writer_never_deletes_a_live_writers_staging(spark, tmp_path):
    out = tmp_path / "o"
    commit_output(spark, str(out), rows_writer(spark, [0]))

    def second_writer(staging):  # runs while the first one's staging is half written
        commit_output(spark, str(out), rows_writer(spark, [2, 2]))
        assert Path(staging.replace("file:", "")).is_dir()  # the first writer's lease kept it
        assert read_rows(spark, out) == [2, 2]

    commit_output(spark, str(out), rows_writer(spark, [1, 1, 1], during=second_writer))
    assert read_rows(spark, out) == [1, 1, 1]  # the last commit wins, whole
    assert json.loads((out / MANIFEST).read_text())["rows"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_vanished_staging_folder_is_never_recreated(spark, tmp_path):
    out = tmp_path / "o"
    commit_output(spark, str(out), rows_writer(spark, [0]))
    before = snapshot(out)
    with pytest.raises(IOError, match="vanished"):
        commit_output(spark, str(out), rows_writer(spark, [1], during=lambda st: storage.delete(st)))
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_two_concurrent_writers_leave_one_complete_output(spark, tmp_path):
    out = tmp_path / "o"
    results, errors = {}, []

    def writer(name, rows):
        try:
            results[name] = commit_output(spark, str(out), rows_writer(spark, rows))
        except Exception as e:  # losing the race is allowed to fail, never to mix
            errors.append(e)

    for round_ in range(3):
        threads = [threading.Thread(target=writer, args=("a", [1] * 3)),
                   threading.Thread(target=writer, args=("b", [2] * 5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = read_rows(spark, out)
        manifest = json.loads((out / MANIFEST).read_text())
        assert rows in ([1] * 3, [2] * 5) and manifest["rows"] == len(rows)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".o.")]  # no staging moved inside
        assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert results and len(errors) <= 3


def test_dedup_checkpoints_reliably_beside_its_output_and_removes_them(spark, small, tmp_path, monkeypatch):
    """Every lineage cut of a dedup command is a reliable checkpoint in `.<output>.staging-<tag>.ckpt` (on the
    output's filesystem, so a lost executor costs a recomputation), and nothing of it is left afterwards."""
    import sid_spark.spark.dedup as dedup_mod

    seen = []
    real = dedup_mod.materialize

    def spy(df, eager=True):
        seen.append(storage.checkpoint_dir(df.sparkSession))
        return real(df, eager)

    monkeypatch.setattr(dedup_mod, "materialize", spy)
    assert encode(small, tmp_path / "sids") == 0
    assert main(["dedup", "--input", str(small / "v1"), "--sids", str(tmp_path / "sids"), "--model",
                 str(small / "model"), "--output", str(tmp_path / "dd"), "--set", "dedup=reassign"]) == 0
    assert seen and all(d and ".dd.staging-" in d and ".ckpt/" in d for d in seen), seen
    assert spark.sparkContext.getCheckpointDir() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd", "sids"]
