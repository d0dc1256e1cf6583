"""Fine-tuning from a released tower: ``model.init_from: languagebind:<dir>`` through ``model.train``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contracts.config_io import ConfigError
from model import LanguageBind
from model.train import main
from model.train_config import load_train_config
from pipeline.synthetic import CONCEPTS
from tests.languagebind_ckpt import load_reference, reference_vision, write_checkpoint
from tests.test_data import write_concept_shards
from tests.test_languagebind_load import TEXTS
from tests.test_train import losses, write_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lb_train_shards")
    write_concept_shards(d, CONCEPTS[:12], per_concept=1, per_shard=4)
    return d


def test_fine_tuning_starts_from_the_release_and_resumes_and_exports(tmp_path, shards):
    release = write_checkpoint(tmp_path / "release", "video", seed=11)
    model = {"init_from": f"languagebind:{release}", "modalities": {"video": {"lora": {"r": 4, "alpha": 8}}}}
    common = {"optim": {"max_steps": 4, "lr": 1e-2}, "data": {"batch_size": 4}}
    path = write_config(tmp_path, shards, model=model, train={"stop_at": 2, "save_every": 1}, **common)
    cfg = load_train_config(path)
    tower = cfg.model_dict()["modalities"]["video"]
    assert (tower["num_frames"], tower["image_size"], tower["lora"]["r"]) == (
        4,
        32,
        4,
    )  # sizes from the release
    assert main(["--config", str(path)]) == 0
    base = LanguageBind.load(tmp_path / "run" / "base")  # step 0 is the release, LoRA (zero) on top
    sd, config = load_reference(release)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = F.normalize(reference_vision(sd, config, x), dim=-1)
    assert (base.encode("video", x.transpose(1, 2)) - expected).abs().max() < 1e-4
    assert base.logit_scale_of("video").item() == pytest.approx(sd["logit_scale"].exp().item(), rel=1e-6)
    assert main(["--config", str(path), "--resume", "latest", "--set", "train.stop_at=null"]) == 0
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]
    tuned = LanguageBind.load(tmp_path / "run" / "export")
    assert not any(".lora_" in k for k in tuned.state_dict())
    assert (tuned.encode("video", x.transpose(1, 2)) - expected).abs().max() > 1e-3  # it trained
    assert torch.allclose(tuned.encode_text(TEXTS), base.encode_text(TEXTS), atol=1e-6)  # text stays frozen


def test_init_from_errors_are_config_errors(tmp_path, shards):
    release = write_checkpoint(tmp_path / "depth", "depth")
    wrong = write_config(
        tmp_path / "a", shards, model={"init_from": f"languagebind:{release}", "modalities": {"video": {}}}
    )
    with pytest.raises(ConfigError, match="is a depth tower"):
        load_train_config(wrong)
    missing = write_config(
        tmp_path / "b",
        shards,
        model={"init_from": "languagebind:/nope/LanguageBind_Video", "modalities": {"video": {}}},
    )
    assert main(["--config", str(missing)]) == 2


@pytest.mark.parametrize(
    "modality,variant", [("video", "video"), ("audio", "audio"), ("depth", "depth"), ("infrared", "thermal")]
)
def test_languagebind_recipes_validate_against_a_local_release(tmp_path, modality, variant):
    release = write_checkpoint(tmp_path / variant, variant)
    cfg = load_train_config(
        f"configs/train/languagebind_{modality}.yaml", [f"model.init_from=languagebind:{release}"]
    )
    tower = cfg.model_dict()["modalities"][modality]
    assert tower["lora"]["r"] > 0 and tower["width"] == 32 and cfg.data.modalities == [modality]
