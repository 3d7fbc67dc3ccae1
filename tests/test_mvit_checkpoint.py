"""MViT checkpoints: official PySlowFast/STTS `.pyth` files (rebuilt from their YAML config), stts's own
format, and strict / non-strict loading. The oracle is the official fixture's logits."""

import pytest
import torch
import yaml
from conftest import decode_input, fixture_state_dict, load_fixture

import stts
from stts.checkpoint import CheckpointError
from stts.models.pyslowfast import model_from_official, model_kwargs_from_official, plan_from_official


def pyslowfast_cfg(time_loc=None, space_loc=None, time_ratio=(0.5,), space_ratio=(0.7367,), **mvit) -> dict:
    """The keys of a PySlowFast MViT config that matter, for the fixtures' small MViT-B."""
    return {
        "MODEL": {"ARCH": "mvit", "MODEL_NAME": "MViT", "NUM_CLASSES": 7, "DROPOUT_RATE": 0.5},
        "DATA": {"NUM_FRAMES": 16, "TRAIN_CROP_SIZE": 112, "INPUT_CHANNEL_NUM": [3], "SAMPLING_RATE": 4},
        "MVIT": {
            "MODE": "conv", "POOL_FIRST": False, "CLS_EMBED_ON": True, "PATCH_KERNEL": [3, 7, 7],
            "PATCH_STRIDE": [2, 4, 4], "PATCH_PADDING": [1, 3, 3], "PATCH_2D": False, "EMBED_DIM": 16,
            "NUM_HEADS": 1, "MLP_RATIO": 4.0, "QKV_BIAS": True, "DROPPATH_RATE": 0.2, "DEPTH": 16,
            "NORM": "layernorm", "DIM_MUL": [[1, 2.0], [3, 2.0], [14, 2.0]],
            "HEAD_MUL": [[1, 2.0], [3, 2.0], [14, 2.0]],
            "POOL_KV_STRIDE": [], "POOL_KV_STRIDE_ADAPTIVE": [1, 8, 8],
            "POOL_Q_STRIDE": [[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]], "POOL_KVQ_KERNEL": (3, 3, 3),
            "ZERO_DECAY_POS_CLS": False, "NORM_STEM": False, "SEP_POS_EMBED": True, "DROPOUT_RATE": 0.0,
            "DECAY_SIGMA": True, "SIGMA": 0.1, "TIME_PRUNING_LOC": time_loc, "SPACE_PRUNING_LOC": space_loc,
            "TIME_SCORE": "tpool", "SPACE_SCORE": "spatch", "TIME_LEFT_RATIO": list(time_ratio),
            "SPACE_LEFT_RATIO": list(space_ratio), **mvit,
        },
    }


def write_pyth(path, state_dict, cfg) -> None:
    # PySlowFast's save_checkpoint layout: epoch, model_state, optimizer_state, cfg (YAML text).
    torch.save({"epoch": 30, "model_state": state_dict, "optimizer_state": {}, "cfg": yaml.dump(cfg)}, path)


def official_sd(with_scorers: bool) -> dict:
    sd = fixture_state_dict("mvit_small")
    return sd if with_scorers else {k: v for k, v in sd.items() if "score_predictor" not in k}


def logits_of(model, name, device="cpu"):
    """(the model's logits on the fixture's input, run on `device`; the official logits), on the CPU."""
    _, io = load_fixture(name)
    with torch.inference_mode():
        return model.eval().to(device)(decode_input(io["input"]).to(device)).cpu(), io["logits"]


def test_load_model_rebuilds_an_official_stts_checkpoint(tmp_path, device):
    path = tmp_path / "t0_0.5_s4_0.7.pyth"
    write_pyth(path, official_sd(True), pyslowfast_cfg(time_loc=[0], space_loc=[4]))
    model = stts.load_model(path)
    assert str(model.plan) == "T0_0.5-S4_0.7367"
    assert all(s.sigma == 0.1 and s.jacobian == "diagonal" for s in model.selectors.values())
    got, want = logits_of(model, "mvit_small_t0_0.5_s4_0.7", device)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    model.cpu()
    # ... and saved again in stts's format (torch file or safetensors), it comes back the same.
    for name in ("again.pt", "again.safetensors"):
        stts.save_model(model, tmp_path / name)
        again = stts.load_model(tmp_path / name)
        assert str(again.plan) == str(model.plan) and again.selectors["T0"].jacobian == "diagonal"
        torch.testing.assert_close(logits_of(again, "mvit_small_t0_0.5_s4_0.7", device)[0], got, atol=0, rtol=0)
    with pytest.raises(ValueError, match="safetensors"):
        stts.save_model(model, tmp_path / "x.safetensors", epoch=3)


def test_load_model_rebuilds_an_official_dense_checkpoint(tmp_path, device):
    path = tmp_path / "dense.pyth"
    write_pyth(path, {f"module.{k}": v for k, v in official_sd(False).items()}, pyslowfast_cfg())  # DDP prefix
    model = stts.load_model(path)
    assert len(model.selectors) == 0
    got, want = logits_of(model, "mvit_small_dense", device)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_pretrained_official_weights_through_create_model(tmp_path, device):
    path = tmp_path / "ckpt.pyth"
    write_pyth(path, official_sd(True), pyslowfast_cfg(time_loc=[0], space_loc=[4], time_ratio=[0.375],
                                                        space_ratio=[0.2]))
    model = stts.create_model("mvit_b_16x4", pretrained=str(path), selection="T0_0.375-S4_0.2", embed_dim=16,
                              num_classes=7, img_size=112)
    got, want = logits_of(model, "mvit_small_t0_0.375_s4_0.2", device)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_strict_loading_lists_missing_and_unexpected_keys(tmp_path):
    dense, full = tmp_path / "dense.pyth", tmp_path / "stts.pyth"
    write_pyth(dense, official_sd(False), pyslowfast_cfg())
    write_pyth(full, official_sd(True), pyslowfast_cfg(time_loc=[0], space_loc=[4]))
    small = dict(embed_dim=16, num_classes=7, img_size=112)
    # Dense weights into an STTS model: the scorers are missing.
    with pytest.raises(CheckpointError, match=r"missing keys \(20\): selectors\.T0\.scorer\.embed\.0\.weight"):
        stts.create_model("mvit_b_16x4", pretrained=str(dense), selection="T0_0.5-S4_0.7367", **small)
    # ... unless non-strict loading is asked for (fine-tuning: the scorers start fresh).
    model = stts.create_model("mvit_b_16x4", pretrained=str(dense), selection="T0_0.5-S4_0.7367", strict=False,
                              **small)
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, official_sd(False)["blocks.3.mlp.fc1.weight"])
    # STTS weights into a dense model: the scorers are unexpected, named with their official keys.
    with pytest.raises(CheckpointError, match=r"unexpected keys \(20\): .*time_score_predictor\.0"):
        stts.create_model("mvit_b_16x4", pretrained=str(full), **small)
    info = stts.checkpoint.load_pretrained(stts.create_model("mvit_b_16x4", **small), full, strict=False)
    assert len(info["unexpected"]) == 20 and info["missing"] == []
    # load_model reads the plan from the official config; overrides change build kwargs.
    model = stts.load_model(full, drop_path_rate=0.0)
    assert list(model.selectors) == ["T0", "S4"] and model.model_kwargs["drop_path_rate"] == 0.0


def test_shape_mismatch_is_always_an_error(tmp_path):
    path = tmp_path / "dense.pyth"
    write_pyth(path, official_sd(False), pyslowfast_cfg())
    with pytest.raises(CheckpointError, match=r"head\.weight \(7, 128\) vs model \(10, 128\)"):
        stts.create_model("mvit_b_16x4", pretrained=str(path), strict=False, embed_dim=16, num_classes=10,
                          img_size=112)


def test_official_pos_embed_is_resampled_to_another_clip(tmp_path):
    """The official 8 x 28 x 28 embeddings loaded into a 6 x 40 x 40 model: bicubic in space, linear in time,
    as the interpolation formulas of tests/_interpolation.py give them."""
    from _interpolation import bicubic, linear

    path = tmp_path / "dense.pyth"
    sd = official_sd(False)
    write_pyth(path, sd, pyslowfast_cfg())
    model = stts.create_model("mvit_b_16x4", pretrained=str(path), embed_dim=16, num_classes=7, img_size=160,
                              num_frames=12)
    spatial, temporal = sd["pos_embed_spatial"], sd["pos_embed_temporal"]  # (1, 28*28, 16), (1, 8, 16)
    assert spatial.std(1).min() > 0 and temporal.std(1).min() > 0  # the check needs varying embeddings
    want_spatial = bicubic(spatial.view(28, 28, 16), (40, 40)).reshape(1, 40 * 40, 16)
    torch.testing.assert_close(model.pos_embed_spatial.detach().double(), want_spatial, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.pos_embed_temporal.detach().double(), linear(temporal[0], 6)[None],
                               atol=1e-6, rtol=1e-5)


def test_config_reading():
    cfg = pyslowfast_cfg(time_loc=[0], space_loc=[4], time_ratio=[0.875], space_ratio=[0.863])
    kw = model_kwargs_from_official(cfg)
    assert kw["embed_dim"] == 16 and kw["img_size"] == 112 and kw["num_classes"] == 7
    assert kw["pool_kernel"] == [3, 3, 3] and kw["pool_kv_stride"] is None
    assert kw["pool_kv_stride_adaptive"] == [1, 8, 8]
    plan = plan_from_official(cfg)
    assert str(plan) == "T0_0.875-S4_0.863" and plan.sigma == 0.1 and plan.jacobian == "diagonal"
    assert plan_from_official(pyslowfast_cfg()) is None
    # Not an MViT checkpoint: other readers get their turn.
    assert model_from_official({"model_state": {}}) is None
    assert model_from_official({"cfg": yaml.dump({"MODEL": {"ARCH": "slowfast"}})}) is None
    with pytest.raises(ValueError, match="MVIT.REL_POS_SPATIAL"):
        model_from_official({"cfg": yaml.dump(pyslowfast_cfg(REL_POS_SPATIAL=True))})
    with pytest.raises(ValueError, match="TIME_LEFT_RATIO"):
        plan_from_official(pyslowfast_cfg(time_loc=[0, 2], time_ratio=[0.5]))


def test_checkpoint_without_config_cannot_be_rebuilt(tmp_path):
    path = tmp_path / "bare.pyth"
    torch.save({"model_state": official_sd(False)}, path)
    with pytest.raises(CheckpointError, match="no stts config"):
        stts.load_model(path)
