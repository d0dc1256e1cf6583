"""Atomic writes of the run store: a file appears whole or not at all."""

from __future__ import annotations

import pytest

from contracts import store
from stages.shard import write_tar


def test_open_atomic_publishes_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "data.bin"
    with store.open_atomic(str(target)) as f:
        f.write(b"abc")
        assert not target.exists()  # still under its temporary name
    assert target.read_bytes() == b"abc"

    other = tmp_path / "sub" / "broken.bin"
    with pytest.raises(RuntimeError), store.open_atomic(str(other)) as f:
        f.write(b"half")
        raise RuntimeError("writer died")
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]


def test_streamed_tar_reads_back_member_by_member(tmp_path):
    import tarfile

    samples = [(f"k{i}", {"json": b"{}", "rgb.0.jpg": bytes([i]) * (1000 + i)}) for i in range(5)]
    write_tar(str(tmp_path / "00000.tar"), samples)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert members == [(f"{k}.{s}", d) for k, files in samples for s, d in files.items()]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(store.TMP_PREFIX)]
