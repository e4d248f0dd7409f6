"""Atomic outputs: a job killed (SIGKILL, driver + JVM) while committing leaves the previous output byte for
byte, nothing partial visible; the next run cleans up and commits; rerunning a finished job is idempotent.
The two rename steps of the commit are also interrupted by hand, at each point a kill could land."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality

from sid_spark.cli import main
from sid_spark.spark.io import MANIFEST, commit_output, read_input, recover_output
from sid_spark.storage import LEASE_CONF
from sid_spark.tokenizer import ResidualKMeansTokenizer
from tests.conftest import make_df

ROOT = Path(__file__).resolve().parents[1]

# Runs `sid-spark encode` and parks it right before the manifest is written (every data file of the new output
# is in staging by then): the worst moment to be killed.
HANG_BEFORE_MANIFEST = r"""
import os, sys, time
import sid_spark.spark.io as io
real = io.write_text
def write_text(spark, path, text):
    if path.endswith(io.MANIFEST):
        open(os.environ["SID_TEST_READY"], "w").write(path)
        time.sleep(600)
    return real(spark, path, text)
io.write_text = write_text
from sid_spark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def snapshot(path: Path) -> dict:
    """relative path -> sha256 of every file under `path` (Spark's .crc files included)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def live_members(pgid: int) -> list:
    """Pids of the process group `pgid` that are not zombies (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def visible(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith((".", "_")))


def hidden_staging(parent: Path, name: str) -> list:
    """The staging folders of `name` (not their .lease / .ckpt companions)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.staging-")
                  and not p.name.endswith((".lease", ".ckpt")))


def leftovers(parent: Path, name: str) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.staging-"))


@pytest.fixture(scope="module")
def model_and_catalogs(spark, blobs, tmp_path_factory):
    root = tmp_path_factory.mktemp("atomic")
    make_df(spark, blobs[::8], partitions=2).write.parquet(str(root / "v1"))
    make_df(spark, blobs[1::8], partitions=2, ids=np.arange(1000, 1000 + len(blobs[1::8]))) \
        .write.parquet(str(root / "v2"))
    model = ResidualKMeansTokenizer(levels=2, codebookSize=4, seed=2, balance="none", max_iter=2) \
        .fit(spark.read.parquet(str(root / "v1")))
    model.save(str(root / "model"))
    return root


def encode(root, catalog, out):
    return main(["encode", "--input", str(root / catalog), "--model", str(root / "model"), "--output", str(out)])


def test_killed_encode_keeps_previous_output_and_rerun_is_idempotent(spark, model_and_catalogs, tmp_path):
    root = model_and_catalogs
    out = tmp_path / "sids"
    assert encode(root, "v1", out) == 0
    before = snapshot(out)
    assert MANIFEST in before and "_SUCCESS" in before

    ready = tmp_path / "ready"
    env = {**os.environ, "SID_TEST_READY": str(ready), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HANG_BEFORE_MANIFEST, "encode", "--input", str(root / "v2"),
                             "--model", str(root / "model"), "--output", str(out), "--master", "local[1]"],
                            env=env, cwd=str(tmp_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), f"the encode job never reached its commit (exit code {proc.poll()})"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM: the whole group, like a lost container
        proc.wait(timeout=60)
    deadline = time.time() + 30
    while live_members(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert live_members(proc.pid) == []  # nothing of the job is left running (zombies aside)

    staged = hidden_staging(tmp_path, "sids")
    assert len(staged) == 1 and any(p.name.startswith("part-") for p in (tmp_path / staged[0]).iterdir())
    assert not (tmp_path / staged[0] / MANIFEST).exists()
    assert snapshot(out) == before  # the previous output, byte for byte
    assert visible(tmp_path) == ["ready", "sids"]
    assert {r["item_id"] for r in spark.read.parquet(str(out)).collect()} == set(range(400))

    # Until its lease runs out, the dead writer cannot be told from a live one: its staging folder is kept.
    recover_output(spark, str(out))
    assert hidden_staging(tmp_path, "sids") == staged
    # Once the lease has run out, the next run cleans the leftover staging directory and commits the new output.
    spark.conf.set(LEASE_CONF, "1")
    try:
        time.sleep(1.5)
        assert encode(root, "v2", out) == 0
    finally:
        spark.conf.unset(LEASE_CONF)
    assert leftovers(tmp_path, "sids") == []
    first = spark.read.parquet(str(out)).orderBy("item_id")
    first_rows = first.collect()
    m1 = json.loads((out / MANIFEST).read_text())
    assert {r["item_id"] for r in first_rows} == set(range(1000, 1400))

    # Rerunning a finished job: same rows, same manifest (but for the timing), nothing left over.
    assert encode(root, "v2", out) == 0
    assert leftovers(tmp_path, "sids") == []
    assert_df_equality(spark.read.parquet(str(out)).orderBy("item_id"), spark.createDataFrame(first_rows,
                                                                                               first.schema))
    m2 = json.loads((out / MANIFEST).read_text())
    m1.pop("encode_seconds"), m2.pop("encode_seconds")
    assert m1 == m2


def write_rows(spark, rows):
    def write(staging):
        spark.createDataFrame(rows, "x long").coalesce(1).write.parquet(staging)
        return {"kind": "test_rows", "rows": len(rows)}
    return write


def test_failed_write_leaves_previous_output_and_no_staging(spark, tmp_path):
    out = str(tmp_path / "o")
    commit_output(spark, out, write_rows(spark, [(1,), (2,)]))
    before = snapshot(tmp_path / "o")

    def failing(staging):
        write_rows(spark, [(3,)])(staging)
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        commit_output(spark, out, failing)
    assert snapshot(tmp_path / "o") == before
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_kill_between_the_two_renames_is_recovered(spark, tmp_path):
    """The commit moves the previous output aside, then renames staging in: a kill in between leaves no output;
    reading it (or the next write) puts the previous one back. A kill after the commit leaves `.old` behind:
    cleaned, the new output kept."""
    out = tmp_path / "o"
    commit_output(spark, str(out), write_rows(spark, [(1,), (2,)]))
    v1 = snapshot(out)
    commit_output(spark, str(tmp_path / "o_new"), write_rows(spark, [(5,)]))
    v2 = snapshot(tmp_path / "o_new")

    # Killed between the renames: previous output aside, new one still in staging.
    os.rename(tmp_path / "o_new", tmp_path / ".o.staging-dead0001")
    os.rename(out, tmp_path / ".o.staging-dead0001.old")
    assert not out.exists()
    df = read_input(spark, str(out))
    assert sorted(r["x"] for r in df.collect()) == [1, 2]
    assert snapshot(out) == v1 and hidden_staging(tmp_path, "o") == []

    # Killed after the commit, before deleting the previous output.
    (tmp_path / ".o.staging-dead0002.old").mkdir()
    (tmp_path / ".o.staging-dead0002.old" / "part-0").write_text("stale")
    recover_output(spark, str(out))
    assert snapshot(out) == v1 and hidden_staging(tmp_path, "o") == []
    assert v2 != v1
