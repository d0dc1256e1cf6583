"""The paper's figures beside ours: every entered figure is one the harness prints (a benchmark it has,
a metric path its table shows), the row is chosen from the checkpoint name, and a run through the CLI
prints the figure and its citation in the table and keeps the JSON record's ``paper`` shape."""

from __future__ import annotations

import json
import re

import pytest
import torch

from model.benchmarks import paper, registry, report
from model.benchmarks.paper import PAPER, PAPER_ROW, figures_for, reference_row
from model.eval import main
from tests import test_benchmarks_data as data

# What the README's result images and Model Zoo table print, cell by cell (module docstring of
# model/benchmarks/paper.py): (row, benchmark, metric path) -> value. A change to PAPER must show here.
EXPECTED = {
    (PAPER_ROW, "msrvtt", "text_to_video.R@1"): 42.6,
    (PAPER_ROW, "msrvtt", "text_to_video.R@10"): 75.5,
    (PAPER_ROW, "msvd", "text_to_video.R@5"): 79.4,
    (PAPER_ROW, "didemo", "text_to_video.R@1"): 37.8,
    (PAPER_ROW, "activitynet", "text_to_video.R@10"): 76.6,
    (PAPER_ROW, "llvip", "top1"): 87.2,
    (PAPER_ROW, "flir_v1", "top1"): 82.9,
    (PAPER_ROW, "flir_v2", "top1"): 48.0,
    (PAPER_ROW, "nyud", "top1"): 65.1,
    (PAPER_ROW, "esc50", "top1"): 91.8,
    (PAPER_ROW, "clotho", "text_to_audio.R@1"): 12.1,
    (PAPER_ROW, "audiocaps", "text_to_audio.R@10"): 53.2,
    ("LanguageBind_Video_FT", "msrvtt", "text_to_video.R@5"): 67.1,
    ("LanguageBind_Video_FT", "activitynet", "text_to_video.R@1"): 36.9,
    ("LanguageBind_Video_V1.5_FT", "msvd", "text_to_video.R@1"): 54.1,
    ("LanguageBind_Video_Huge_V1.5_FT", "activitynet", "text_to_video.R@1"): 41.0,
    ("LanguageBind_Audio_FT", "esc50", "top1"): 94.0,
    ("LanguageBind_Audio_FT", "clotho", "text_to_audio.R@10"): 52.0,
    ("LanguageBind_Audio_FT", "audiocaps", "text_to_audio.R@1"): 19.7,
}


def test_the_entered_cells():
    for (row, bench, path), value in EXPECTED.items():
        fig = PAPER[row][bench][path]
        assert (fig.value, fig.row) == (value, row), (row, bench, path)
    # what the sources do not give stays out: no figure is better than a wrong one
    for row in PAPER.values():
        assert not {"sund", "imagenet", "audioset"} & set(row)
        assert not any("_to_text." in p for figs in row.values() for p in figs)
    zoo = PAPER["LanguageBind_Video_Huge_V1.5_FT"]["msrvtt"]
    assert list(zoo) == ["text_to_video.R@1"] and "Model Zoo" in zoo["text_to_video.R@1"].source


def test_every_figure_is_one_the_table_prints():
    """A figure under a benchmark we lack, or under a metric path the table never shows, would never
    be printed; a figure without its source could not be checked."""
    for row_name, row in PAPER.items():
        for bench, figs in row.items():
            b = registry.get(bench)
            assert b.name == bench, (row_name, bench)
            shown = {path.format(m=b.modality) for path, _, _ in report._ROWS[b.task]}
            for path, fig in figs.items():
                assert path in shown, (row_name, bench, path)
                assert 0 < fig.value <= 100 and fig.row == row_name
                assert fig.source.startswith("LanguageBind README, ")
                zoo = "Model Zoo" in fig.source
                assert (row_name in fig.source) if zoo else ("row LanguageBind" in fig.source)
    # the starred ("full tuning") row is the _FT towers', the plain row the LoRA towers'
    assert "full tuning" in PAPER["LanguageBind_Audio_FT"]["esc50"]["top1"].source
    assert "full tuning" not in PAPER["LanguageBind_Audio"]["esc50"]["top1"].source


@pytest.mark.parametrize(
    ("checkpoint", "row"),
    [
        ("LanguageBind/LanguageBind_Video_FT", "LanguageBind_Video_FT"),
        ("/hub/models--LanguageBind--LanguageBind_Video_V1.5_FT/snapshots/abc", "LanguageBind_Video_V1.5_FT"),
        ("LanguageBind/LanguageBind_Video_Huge_V1.5_FT", "LanguageBind_Video_Huge_V1.5_FT"),
        ("ckpts/languagebind_audio_ft", "LanguageBind_Audio_FT"),
        ("LanguageBind/LanguageBind_Audio", "LanguageBind_Audio"),
        ("LanguageBind/LanguageBind_Thermal", "LanguageBind_Thermal"),
        ("runs/train/demo/export", PAPER_ROW),
    ],
)
def test_the_row_comes_from_the_checkpoint_name(checkpoint, row):
    assert reference_row(checkpoint) == row


def test_a_row_without_the_benchmark_falls_back_to_the_papers_row():
    # a video tower's row has no ESC-50 cell: the paper's row gives it, and says so
    (fig,) = figures_for("LanguageBind_Video_FT", "esc50").values()
    assert (fig.value, fig.row) == (91.8, PAPER_ROW)
    # a row that has the benchmark keeps only its own cells (the V1.5 tower has R@1, not R@5)
    assert list(figures_for("LanguageBind_Video_V1.5_FT", "msrvtt")) == ["text_to_video.R@1"]
    assert figures_for(PAPER_ROW, "sund") == {} and figures_for(PAPER_ROW, "imagenet") == {}
    assert reference_row("x", "LanguageBind_Depth") == "LanguageBind_Depth"
    with pytest.raises(ValueError, match="--paper-model 'Huge'"):
        reference_row("x", "Huge")


def _line(out: str, bench: str, label: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith(bench) and re.search(rf"\s{label}\s", ln))


def test_cli_prints_the_full_tuning_row_for_an_ft_audio_tower(tmp_path, capsys):
    from model import LanguageBind

    torch.manual_seed(0)
    ckpt = LanguageBind.tiny(("audio",)).save(tmp_path / "LanguageBind_Audio_FT-tiny")
    roots = {
        "esc50": data.build_esc50(tmp_path / "esc", public=False),
        "clotho": data.build_clotho(tmp_path / "clotho"),
    }
    cfg = tmp_path / "roots.yaml"
    cfg.write_text("roots:\n" + "".join(f"  {k}: {v}\n" for k, v in roots.items()))
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(ckpt), "--benchmark", "all", "--benchmark-config", str(cfg)]
    rc = main([*args, "--json", str(out), "--no-progress", "--workers", "0", "--device", "cpu"])
    assert rc == 0
    table = capsys.readouterr().out
    esc = _line(table, "esc50", "top-1")
    assert " 94.0 " in esc and esc.rstrip().endswith("(assets/res1.jpg), row LanguageBind* (full tuning)")
    r1 = _line(table, "clotho", "t2a R@1")
    assert " 16.7 " in r1 and "text-to-audio retrieval (assets/res2.jpg)" in r1
    assert " 52.0 " in _line(table, "clotho", "t2a R@10")
    r5 = _line(table, "clotho", "t2a R@5")  # no R@5 in the source: "-" and no citation
    assert re.search(r"t2a R@5\s+\d+\.\d+\s+-\s", r5) and "README" not in r5
    records = {r["benchmark"]: r for r in json.loads(out.read_text())}
    assert records["esc50"]["paper"] == {
        "top1": {
            "value": 94.0,
            "source": paper.PAPER["LanguageBind_Audio_FT"]["esc50"]["top1"].source,
            "row": "LanguageBind_Audio_FT",
        }
    }
    assert set(records["clotho"]["paper"]) == {"text_to_audio.R@1", "text_to_audio.R@10"}
    for rec in records.values():
        for fig in rec["paper"].values():
            assert set(fig) == {"value", "source", "row"}

    # --paper-model picks another row for the same checkpoint
    rc = main([*args, "--paper-model", "LanguageBind_Audio", "--no-progress", "--workers", "0"])
    assert rc == 0
    assert " 91.8 " in _line(capsys.readouterr().out, "esc50", "top-1")
