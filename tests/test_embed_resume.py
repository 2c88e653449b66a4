"""SIGKILL the embed stage's process group mid-run, rerun, and get the uninterrupted run's bytes."""

import pytest

from pipeline.commands.benchmarks.embed import resume_trial, tiny_world

pytestmark = pytest.mark.slow

TRIALS = 5


def test_killed_runs_resume_byte_identical_recomputing_at_most_one_shard(tmp_path):
    argv_for, reference = tiny_world(tmp_path, scenes=3, shard_size=2)
    for trial in range(TRIALS):
        record = resume_trial(argv_for, reference, tmp_path / "trial", kill_after=1 + 2 * trial)
        assert record.complete_at_kill >= 1, record  # killed after a completion marker existed...
        assert record.complete_at_kill < record.shards, record  # ...and before the end
        assert record.identical, record
        assert record.rerun_reused == record.complete_at_kill, record  # finished shards are kept
        assert record.rerun_written == record.shards - record.complete_at_kill, record
        assert record.started_unfinished <= 1, record  # one worker: at most one shard's work lost
