"""Saving and loading protected models: safetensors + JSON, strict loading, no unpickling, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from map_plugin.errors import ArtifactError, MaskStateError
from map_plugin.hub import load_model, save_model
from map_plugin.masks import attach_masks
from map_plugin.models import create_model

CONFIG = {"architecture": "test_resnet", "num_classes": 10, "in_chans": 3, "img_size": 32}


def test_round_trip_gives_identical_outputs(tmp_path):
    model = create_model("test_resnet").eval()
    save_model(model, tmp_path / "m", {**CONFIG, "note": "kept"})
    loaded, config = load_model(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert config["note"] == "kept"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_a_masked_model_is_not_exported(tmp_path):
    with pytest.raises(MaskStateError, match="bake_masks"):
        save_model(attach_masks(create_model("small_cnn")), tmp_path / "m", {**CONFIG, "architecture": "small_cnn"})
    assert not (tmp_path / "m").exists()


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_model(create_model("small_cnn"), tmp_path / "m", {**CONFIG, "architecture": "small_cnn"})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "architecture": "test_resnet"}))
    with pytest.raises(ArtifactError, match="do not fit 'test_resnet'"):
        load_model(tmp_path / "m")


def test_config_without_required_keys_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        save_model(create_model("small_cnn"), tmp_path / "m", {"architecture": "small_cnn"})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="lacks"):
        load_model(tmp_path / "x")
