"""User errors through the real CLI: exit 2, one line naming the problem, before Ray starts and before
anything is written (no root, no demo media, no Ray session directory under ``RAY_TMPDIR``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--quiet",
        "--set",
        f"run.demo_media.dir={tmp / 'demo-media'}",
        "--set",
        "run.demo_media.per_concept=1",
        "--set",
        "run.demo_media.seconds=0.5",
        "--set",
        "run.demo_media.size=[32, 24]",
        *args,
    ]
    full_env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=full_env)


def assert_user_error(res: subprocess.CompletedProcess, tmp: Path, words: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.stderr[-2000:]
    assert res.stdout == ""
    assert not (tmp / "ray").exists(), "Ray was started"
    assert not (tmp / "demo-media").exists(), "demo media were generated before the check"


def good_list(tmp: Path) -> Path:
    clip = tmp / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")  # never read: the run stops before discover
    (lst := tmp / "ok.csv").write_text(f"path,title\n{clip},a clip\n")
    return lst


def list_case(tmp: Path, name: str) -> tuple[list[str], str]:
    """(extra CLI arguments, words the message must hold) for a bad --input."""
    if name == "empty":
        (p := tmp / "empty.csv").write_bytes(b"")
        return ["--input", str(p)], "is empty (0 bytes)"
    if name == "header_only":
        (p := tmp / "header.csv").write_text("url,title\n")
        return ["--input", str(p)], "has no rows (only a header line)"
    if name == "blank_jsonl":
        (p := tmp / "blank.jsonl").write_text("\n\n")
        return ["--input", str(p)], "has no rows (only blank lines)"
    if name == "directory":
        (p := tmp / "lists.csv").mkdir()
        return ["--input", str(p)], "is a directory"
    if name == "unknown_format":
        (p := tmp / "list.txt").write_text("http://example.com/a.mp4\n")
        return ["--input", str(p)], "unknown list format"
    if name == "missing":
        return ["--input", str(tmp / "nope.csv")], "no such file"
    if name == "no_url_column":
        (p := tmp / "links.csv").write_text("link,name\nhttp://example.com/a.mp4,a\n")
        return ["--input", str(p)], "has neither a 'url' nor a 'path' column (its columns: link, name)"
    if name == "empty_parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"url": pa.array([], pa.string())}), p := tmp / "none.parquet")
        return ["--input", str(p)], "has no rows"
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "header_only",
        "blank_jsonl",
        "directory",
        "unknown_format",
        "missing",
        "no_url_column",
        "empty_parquet",
    ],
)
def test_a_bad_input_list_is_one_line_and_exit_2(tmp_path, name):
    args, words = list_case(tmp_path, name)
    res = run_cli(tmp_path, "--root", str(tmp_path / "root"), *args)
    assert_user_error(res, tmp_path, words)
    assert not (tmp_path / "root").exists()


def test_a_file_that_is_not_vidal10m_is_one_line_and_exit_2(tmp_path):
    (released := tmp_path / "vidal10m.json").write_text("[1, 2]")
    res = run_cli(tmp_path, "--root", str(tmp_path / "root"), "--set", f"discover.vidal10m=[{released}]")
    assert_user_error(res, tmp_path, f"discover.vidal10m: {released} is not a VIDAL-10M JSON object")


def test_an_unknown_stage_is_one_line_and_exit_2(tmp_path):
    res = run_cli(
        tmp_path, "--root", str(tmp_path / "root"), "--input", str(good_list(tmp_path)), "--stage", "captoin"
    )
    assert_user_error(res, tmp_path, "--stage 'captoin': unknown stage; available: discover, download")
    assert not (tmp_path / "root").exists()


def test_a_root_that_is_a_file_is_one_line_and_exit_2(tmp_path):
    (root := tmp_path / "root").write_text("not a directory")
    res = run_cli(tmp_path, "--root", str(root))  # no --input: the demo media would be made first
    assert_user_error(res, tmp_path, f"run root {root} is a file")
    assert root.read_text() == "not a directory"


def test_an_unwritable_root_is_one_line_and_exit_2(tmp_path):
    ro = tmp_path / "readonly"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: only a read-only mount refuses it
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
            ).returncode
            != 0
        ):
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        ro.chmod(0o500)
    try:
        res = run_cli(tmp_path, "--root", str(ro / "run"), "--input", str(good_list(tmp_path)))
        assert_user_error(res, tmp_path, f"run root {ro / 'run'} is not writable")
        assert os.listdir(ro) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o700)


def test_a_missing_bucket_is_one_line_and_exit_2(tmp_path, s3_server):
    storage = s3_server.storage()
    res = run_cli(
        tmp_path,
        "--root",
        "s3://no-such-bucket-vidal/run",
        "--input",
        str(good_list(tmp_path)),
        "--set",
        f"run.storage={json.dumps(storage)}",
    )
    assert_user_error(res, tmp_path, "the bucket s3://no-such-bucket-vidal does not exist")
