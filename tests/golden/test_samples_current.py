"""The sample records in examples/ and their golden copies are what the generator
scripts write: an edit by hand (or a stale copy) is caught here."""

from __future__ import annotations

from tests.golden import make_imaging_samples


def test_imaging_samples_are_current() -> None:
    stale = [
        str(path.relative_to(make_imaging_samples.REPO))
        for path, data in make_imaging_samples.files().items()
        if not path.exists() or path.read_bytes() != data
    ]
    assert not stale, "run `python -m tests.golden.make_imaging_samples`: " + ", ".join(stale)
