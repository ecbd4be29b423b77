"""benchmarks/sharding.py: shards partition the jobs; a cut-short shard resumes without redoing runs."""

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sharding  # noqa: E402


def test_shards_partition_the_jobs():
    jobs = [(i, "x") for i in range(11)]
    parts = [sharding.shard(jobs, f"{i}/3") for i in range(3)]
    assert sorted(j for part in parts for j in part) == jobs
    assert parts[1] == [jobs[1], jobs[4], jobs[7], jobs[10]]
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(SystemExit):
            sharding.shard(jobs, bad)


def test_run_shard_resumes_and_merge(tmp_path):
    out = tmp_path / "s.json"
    args = argparse.Namespace(out=str(out), shard="0/1")
    calls = []

    def run_one(job):
        calls.append(job)
        if job[0] == 2 and len(calls) == 3:
            raise KeyboardInterrupt   # killed during the third job
        return {"value": job[0] * 10}

    with pytest.raises(KeyboardInterrupt):
        sharding.run_shard([(0,), (1,), (2,), (3,)], run_one, args)
    assert [r["value"] for r in json.loads(out.read_text())["rows"]] == [0, 10]
    rows = sharding.run_shard([(0,), (1,), (2,), (3,)], run_one, args)
    assert calls == [(0,), (1,), (2,), (2,), (3,)]       # finished jobs are not run again
    assert [r["value"] for r in rows] == [0, 10, 20, 30]
    other = tmp_path / "t.json"
    other.write_text(json.dumps({"rows": [{"value": 99}]}))
    assert [r["value"] for r in sharding.merged([str(out), str(other)])] == [0, 10, 20, 30, 99]
    extended = tmp_path / "u.json"   # a shard continued into a new file repeats jobs: counted once
    extended.write_text(json.dumps({"rows": [{"job": [1], "value": -1}, {"job": [4], "value": 40}]}))
    assert [r["value"] for r in sharding.merged([str(out), str(extended)])] == [0, 10, 20, 30, 40]
    # a balanced sweep out of larger files: only the rows of the requested jobs
    assert [r["value"] for r in sharding.merged([str(out), str(extended)], jobs=[(1,), (4,)])] == [10, 40]
    with pytest.raises(SystemExit, match="not found"):
        sharding.merged([str(tmp_path / "missing.json")])
