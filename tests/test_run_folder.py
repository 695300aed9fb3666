"""RunFolder: a new run's folder is its own."""

import datetime

from trainer import run_folder
from trainer.run_folder import RunFolder


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 3, 19, 15, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_folder, "datetime", FrozenClock)
    claimed = [RunFolder.claim_new("ConvMixer") for _ in range(3)]
    assert [str(path) for path in claimed] == ["runs/20261203-191500-convmixer", "runs/20261203-191500-convmixer-2",
                                               "runs/20261203-191500-convmixer-3"]
    assert all(path.is_dir() and not any(path.iterdir()) for path in claimed)
