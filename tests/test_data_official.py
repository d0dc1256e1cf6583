"""The trainer's loader runs the official processors for a model whose config says ``preprocess: languagebind``.

``model.official_preprocess`` itself is checked against independent references in
``tests/test_languagebind_preprocess.py``; here the point is the wiring: fine-tuning from a released
tower must feed it what the release was trained on, not vidal's own transform.
"""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

from contracts import shard_format as fmt
from model.data import DataConfig, ShardStream, make_loader, tower_sizes
from model.model_config import tiny_config
from model.official_preprocess import official_preprocess
from model.preprocess import preprocess
from pipeline.synthetic import CONCEPTS
from tests.test_data import write_concept_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("official_shards")
    write_concept_shards(out, CONCEPTS[:4], per_concept=1, per_shard=4, depth=True, audio=True)
    return out


def _members(tar_path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _frames(files: dict[str, bytes], prefix: str) -> list[bytes]:
    return [
        files[f"{prefix}.{i}.{ext}"]
        for i in range(8)
        for ext in ("jpg", "png")
        if f"{prefix}.{i}.{ext}" in files
    ]


def test_loader_runs_the_official_processors_when_the_model_asks(shard_dir):
    official = tiny_config(("video", "depth", "audio"), {"preprocess": "languagebind"})
    sizes = tower_sizes(official)
    assert all(s["mode"] == "languagebind" for s in sizes.values())
    assert "mode" not in tower_sizes(tiny_config(("video",)))["video"]  # vidal's own mode stays the default

    data = DataConfig(
        shards=str(shard_dir), modalities=["video", "depth", "audio"], batch_size=4, augment=False
    )
    batch = next(iter(make_loader(ShardStream(data, sizes, train=False))))
    raw = _members(next(shard_dir.glob("*.tar")))
    for i, key in enumerate(batch["key"]):
        files = raw[key]
        video = official_preprocess("video", _frames(files, "rgb"), official.modalities["video"])
        assert torch.allclose(batch["video"][i], video, atol=1e-6)
        # and it is not what vidal's own transform gives for the same frames
        own = preprocess(
            "video", _frames(files, "rgb"), image_size=32, num_frames=official.modalities["video"].num_frames
        )
        assert not torch.allclose(batch["video"][i], own, atol=1e-3)
        audio = official_preprocess("audio", files[fmt.AUDIO_KEY], official.modalities["audio"])
        assert torch.allclose(batch["audio"][i], audio, atol=1e-5)
        assert (
            batch["depth"][i].shape
            == official_preprocess(
                "depth", io.BytesIO(_frames(files, "depth")[0]).getvalue(), official.modalities["depth"]
            ).shape
        )
