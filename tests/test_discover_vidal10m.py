"""The VIDAL-10M reader: the released shape, malformed input, and a streaming read whose memory stays flat."""

from __future__ import annotations

import gzip
import io
import json
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from stages.sources.vidal10m import StreamingJSONError, iter_object_items, read_vidal10m

REPO = Path(__file__).resolve().parent.parent
# The entry shown in LanguageBind's data README, in the released file's shape.
RELEASED_ENTRY = {
    "folder": "coco_vat_9",
    "mplug": "This video describes a group of scuba divers rolling backwards off a boat while playing an "
    "instrument. They are having fun and enjoying their time in the water.",
    "polish_mplug": "scuba divers are seen rolling backwards off a boat while playing an instrument, displaying "
    "enjoyment and having a good time in the water.",
    "ofa": [
        " a man in a wet suit and a helmet on a boat",
        " a man in a scuba suit on a boat",
        " a person in a boat holding a diver helmet",
        " a man in a wetsuit on a jet ski",
        " a picture of a body of water with the words boats on it",
        " a person in the water with the words if they rolled",
        " a person in the water with a paddle",
        " a person in the water with a scooter",
    ],
    "sound_mplug": "scuba divers rolling backwards off a boat while playing an instrument showcases exuberant "
    "laughter, splashing water, and cheery melodies blending with the gentle waves.",
    "raw": "WHY SCUBA DIVERS ROLL BACKWARDS OFF BOAT #shorts",
}


def write_released(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def test_released_shape_becomes_rows_with_captions(tmp_path):
    f = write_released(
        tmp_path / "vidal10m.json",
        {
            "ImkVYKWqlDU": RELEASED_ENTRY,
            "Xy_9-zQwErT": {**RELEASED_ENTRY, "raw": "Cat meets a cucumber #cat #funny", "ofa": ["x"] * 8},
            "not-a-youtube-id!": RELEASED_ENTRY,
            "AbCdEfGhIjK": "not an object",
        },
    )
    rows = [r for batch in read_vidal10m(str(f), batch_size=2) for r in batch]
    assert len(rows) == 4
    first = rows[0]
    assert (
        first["video_id"] == "youtube-ImkVYKWqlDU"
        and first["url"] == "https://www.youtube.com/watch?v=ImkVYKWqlDU"
    )
    assert first["raw"] == RELEASED_ENTRY["raw"]
    assert first["title"] == "WHY SCUBA DIVERS ROLL BACKWARDS OFF BOAT" and first["hashtags"] == ["shorts"]
    assert first["ofa"][0] == "a man in a wet suit and a helmet on a boat" and len(first["ofa"]) == 8
    assert (
        first["mplug"] == RELEASED_ENTRY["mplug"] and first["polish_mplug"] == RELEASED_ENTRY["polish_mplug"]
    )
    assert first["sound_mplug"] == RELEASED_ENTRY["sound_mplug"] and first["folder"] == "coco_vat_9"
    assert first["source"] == "vidal10m" and "row_error" not in first
    assert rows[1]["hashtags"] == ["cat", "funny"]
    assert "not a YouTube id" in rows[2]["row_error"] and "not an object" in rows[3]["row_error"]
    assert [len(b) for b in read_vidal10m(str(f), batch_size=3, limit=2)] == [2]


def test_compressed_release_is_read_too(tmp_path):
    f = tmp_path / "vidal10m.json.gz"
    f.write_bytes(gzip.compress(json.dumps({"ImkVYKWqlDU": RELEASED_ENTRY}).encode()))
    rows = [r for b in read_vidal10m(str(f)) for r in b]
    assert rows[0]["video_id"] == "youtube-ImkVYKWqlDU"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_items_survive_any_chunk_boundary(chunk):
    obj = {
        "ImkVYKWqlDU": RELEASED_ENTRY,
        "k2": {"ofa": ["é" * 9, "\u6771\u4eac", 'quote " and \\ slash']},
        "n": 12345,
        "neg": -1.5e3,
        "t": True,
        "z": None,
        "l": [1, [2, {}]],
    }
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    assert dict(iter_object_items(io.BytesIO(data), chunk_bytes=chunk)) == obj


@pytest.mark.parametrize(
    "text, words",
    [
        (b"[1, 2]", "expected '{'"),
        (b'{"a": 1', "end of file"),
        (b'{"a" 1}', "expected ':'"),
        (b'{"a": 1,}', "string key"),
        (b'{"a": tru}', "invalid JSON"),
        (b"", "end of file"),
    ],
)
def test_malformed_input_fails_with_a_position(text, words):
    with pytest.raises(StreamingJSONError, match=words):
        list(iter_object_items(io.BytesIO(text), chunk_bytes=4))


# Peak RSS from /proc (VmHWM starts afresh at exec; getrusage's ru_maxrss would carry the parent's).
MEASURE = """
import sys
from stages.sources.vidal10m import read_vidal10m
def peak_mb():
    line = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
base = peak_mb()
n = sum(len(b) for b in read_vidal10m(sys.argv[1], limit=20_000))
small = peak_mb()
m = sum(len(b) for b in read_vidal10m(sys.argv[1]))
print(n, m, base, small, peak_mb())
"""


def test_streaming_read_of_a_large_file_keeps_memory_flat(tmp_path):
    """200k entries (~60 MB, ~0.6 GB as Python objects via json.load): peak memory is the same after
    20k entries and after all 200k (a bounded buffer plus one batch)."""
    f = tmp_path / "big.json"
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-_"
    caps = json.dumps([f" a dog on a beach, frame {j}" for j in range(8)])
    with open(f, "w", encoding="utf-8") as out:
        out.write("{")
        for i in range(200_000):
            key = "".join(rng.choices(alphabet, k=11))
            out.write(
                f'{"," if i else ""}\n "{key}": {{"folder": "coco_vat_{i % 50}", "mplug": "a dog runs on a '
                f'beach {i}", "polish_mplug": "a dog running along a beach", "ofa": {caps}, '
                f'"sound_mplug": "waves and barking", "raw": "Dog at the beach {i} #dog #shorts"}}'
            )
        out.write("\n}\n")
    assert f.stat().st_size > 50e6
    res = subprocess.run(
        [sys.executable, "-c", MEASURE, str(f)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    n, m, base, small, full = res.stdout.split()
    assert (int(n), int(m)) == (20_000, 200_000)
    assert float(full) - float(small) < 16, res.stdout  # 10x the entries, no more memory
    assert float(full) - float(base) < 64, res.stdout
