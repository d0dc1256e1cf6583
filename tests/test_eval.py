"""Evaluation: retrieval and classification metrics against hand-computed values, and the CLI on shards."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from model.eval import classification_metrics, label_of, main, paired_retrieval, retrieval_metrics
from pipeline.synthetic import CONCEPTS
from tests.test_data import write_concept_shards


def test_retrieval_metrics_match_hand_computed_ranks():
    sim = torch.tensor(
        [[0.9, 0.1, 0.3, 0.0], [0.2, 0.5, 0.8, 0.9], [0.4, 0.6, 0.7, 0.1], [0.3, 0.2, 0.1, 0.0]]
    )
    # positives on the diagonal: ranks 1, 3 (0.8 and 0.9 beat 0.5), 1, 4
    m = retrieval_metrics(sim, torch.eye(4, dtype=torch.bool))
    assert m["R@1"] == pytest.approx(0.5) and m["R@5"] == 1.0 and m["R@10"] == 1.0
    assert m["median_rank"] == 1.0  # torch's median of [1, 1, 3, 4] is the lower middle value
    assert m["mean_rank"] == pytest.approx(9 / 4)
    assert m["chance_R@1"] == pytest.approx(0.25)
    # two positives for the second query: the better one (column 3, rank 1) counts
    pos = torch.eye(4, dtype=torch.bool)
    pos[1, 3] = True
    assert retrieval_metrics(sim, pos)["R@1"] == pytest.approx(0.75)


def test_duplicate_captions_are_one_candidate():
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.05], [0.0, 1.0]]), dim=-1)
    t2x, x2t = paired_retrieval(x, ["a", "b", "a"], text, ["a", "b"])
    assert t2x["queries"] == 2 and t2x["candidates"] == 3 and t2x["R@1"] == 1.0
    assert x2t["queries"] == 3 and x2t["candidates"] == 2 and x2t["R@1"] == 1.0
    assert t2x["chance_R@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # swap the captions: every item now points at the wrong one
    _, wrong = paired_retrieval(x, ["b", "a", "b"], text, ["a", "b"])
    assert wrong["R@1"] == 0.0 and wrong["median_rank"] == 2.0


def test_label_of_and_classification_metrics():
    classes = ["left", "right", "up", "down", "moving up"]
    assert label_of("a red circle moving left", classes) == 0
    assert label_of("a red circle moving up", classes) == 4  # the longest name wins
    assert label_of("Right", classes) == 1
    assert label_of("a circle uplifted", classes) is None  # whole words only
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    m = classification_metrics(logits, torch.tensor([1, 0, 1, 2]))
    assert m["top1"] == pytest.approx(0.5) and m["top5"] == 1.0 and m["chance_top1"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from model import LanguageBind

    torch.manual_seed(0)
    model = LanguageBind.tiny(("video",))
    return model, model.save(tmp_path_factory.mktemp("export") / "model")


def test_eval_cli_matches_direct_computation(tmp_path, tiny_export, capsys):
    model, path = tiny_export
    shards = write_concept_shards(tmp_path / "shards", CONCEPTS[:12], per_concept=1, per_shard=4)
    out = tmp_path / "eval.json"
    rc = main(
        [
            "--checkpoint",
            str(path),
            "--data",
            str(shards[0].parent),
            "--text-field",
            "title",
            "--classes",
            "left,right,up,down",
            "--templates",
            "something moving {}",
            "--json",
            str(out),
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "text->video" in printed and "zero-shot video" in printed
    results = json.loads(out.read_text())
    video = results["modalities"]["video"]
    assert video["samples"] == 12 and video["classification"]["samples"] == 12

    # the same numbers from the model's own inference API on the same frames
    from model.data import frames_of
    from tests.test_data import _members

    items = [(k, f) for s in shards for k, f in _members(s)]
    emb = model.encode("video", [frames_of(f, "rgb") for _, f in items])
    titles = [json.loads(f["json"])["title"] for _, f in items]
    t2x, x2t = paired_retrieval(emb, titles, model.encode_text(titles), titles)
    assert video["text_to_video"]["R@1"] == pytest.approx(t2x["R@1"])
    assert video["video_to_text"]["mean_rank"] == pytest.approx(x2t["mean_rank"], rel=1e-5)
