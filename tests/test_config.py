"""Run configs: defaults are the published recipe, the override layers, and errors that name
source, key and value."""

from pathlib import Path

import pytest
import yaml

from stts.config import ConfigError, RunConfig, load_config, to_dict

CONFIGS = Path(__file__).parent.parent / "configs"


def _yaml(tmp_path, data, name="run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_are_the_published_recipe():
    cfg = RunConfig()
    o, t, d, m = cfg.optim, cfg.train, cfg.data, cfg.model
    # PAPER.md: AdamW 1e-4, wd 0.05, 20 epochs, 3 scorer-only warm-up epochs, backbone 0.1 x lr,
    # cosine to 1e-6, clip 1.0; mixup 0.8 / cutmix 1.0 / smoothing 0.1; RandAugment m7 n4; erasing 0.25;
    # batch 16 per GPU; sigma 0.1 (MViT) decayed to 0, 500 samples.
    assert (o.lr, o.weight_decay, o.min_lr, o.clip_grad) == (1e-4, 0.05, 1e-6, 1.0)
    assert (t.epochs, o.scorer_warmup_epochs, o.backbone_lr_mult, t.batch_size) == (20, 3, 0.1, 16)
    assert (d.mixup_alpha, d.cutmix_alpha, d.label_smoothing) == (0.8, 1.0, 0.1)
    assert (d.randaug, d.randaug_magnitude, d.randaug_num_ops, d.erase_prob) == (True, 7, 4, 0.25)
    assert (d.rrc_scale, d.crop_size, d.num_frames, d.sampling_rate) == ((0.08, 1.0), 224, 16, 4)
    assert (m.sigma, m.num_samples, t.sigma_decay) == (0.1, 500, True)


def test_yaml_overrides_defaults_and_command_line_overrides_yaml(tmp_path):
    path = _yaml(tmp_path, {"model": {"name": "mvit_b_16x4", "kwargs": {"depth": 4}},
                            "optim": {"lr": "2e-4", "betas": [0.8, 0.9]}, "train": {"epochs": 5, "amp": "bf16"},
                            "data": {"rrc_scale": [0.2, 1.0]}})
    cfg = load_config(path, ["train.epochs=7", "optim.weight_decay=1e-2", "model.selection=T0_0.5",
                             "model.kwargs.embed_dim=32", "data.num_frames=8"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)  # the string is converted
    assert cfg.optim.betas == (0.8, 0.9) and cfg.data.rrc_scale == (0.2, 1.0)
    assert cfg.train.epochs == 7 and cfg.train.amp == "bf16"  # command line wins over the file
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.min_lr == 1e-6  # untouched default stays
    assert cfg.model.kwargs == {"depth": 4, "embed_dim": 32} and cfg.data.num_frames == 8
    # The resolved config round-trips as the base layer (what checkpoints store).
    assert load_config(None, [], base=to_dict(cfg)) == cfg


@pytest.mark.parametrize("file_data,overrides,where,key,value", [
    ({"optim": {"lr": -0.1}}, [], "FILE", "optim.lr", "-0.1"),
    ({}, ["optim.lr=-1e-3"], "command line", "optim.lr", "-0.001"),
    ({"optim": {"lrr": 1.0}}, [], "FILE", "optim.lrr", "1.0"),
    ({"optimizer": {"lr": 1.0}}, [], "FILE", "optimizer", "{'lr': 1.0}"),
    ({}, ["foo.bar=1"], "command line", "foo.bar", "1"),
    ({"train": {"epochs": "many"}}, [], "FILE", "train.epochs", "'many'"),
    ({"data": {"num_frames": 3.5}}, [], "FILE", "data.num_frames", "3.5"),
    ({}, ["model.name=mvit_x"], "command line", "model.name", "'mvit_x'"),
    ({"model": {"name": "mvit_b_16x4", "selection": "T0_1.5"}}, [], "FILE", "model.selection", "'T0_1.5'"),
    ({"model": {"name": "mvit_b_16x4_stts_t0.5_s0.7", "selection": "T0_0.5"}}, [], "FILE", "model.selection",
     "'T0_0.5'"),
    ({}, ["train.amp=fp8"], "command line", "train.amp", "'fp8'"),
    ({"data": {"format": "webdataset"}}, [], "FILE", "data.format", "'webdataset'"),
    ({"optim": {"scorer_warmup_epochs": 20}}, [], "FILE", "optim.scorer_warmup_epochs", "20"),
    ({"model": {"jacobian": "diag"}}, [], "FILE", "model.jacobian", "'diag'"),
    ({"train": {"device": "gpu"}}, [], "FILE", "train.device", "'gpu'"),
    ({}, ["eval.average=median"], "command line", "eval.average", "'median'"),
])
def test_errors_name_source_key_and_value(tmp_path, file_data, overrides, where, key, value):
    data = {"model": {"name": "mvit_b_16x4"}}
    for section, values in file_data.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    path = _yaml(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    source = str(path) if where == "FILE" else where
    assert msg.startswith(f"{source}: {key}={value}"), msg


def test_unknown_model_lists_the_registry_and_missing_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.name='mvit_b_16x5'.*Did you mean 'mvit_b_16x4'"):
        load_config(None, ["model.name=mvit_b_16x5"])
    with pytest.raises(ConfigError, match=r"defaults: model.name='': required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.name"])


def test_files_must_exist_for_training_only(tmp_path):
    args = ["model.name=mvit_b_16x4", f"model.finetune={tmp_path / 'nope.pt'}"]
    with pytest.raises(ConfigError, match=r"command line: model.finetune=.*nope.pt': no such file"):
        load_config(None, args)
    assert load_config(None, args, check_paths=False).model.finetune.endswith("nope.pt")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_published_configs_load(name):
    """Every shipped config validates; a mistyped model name fails (load_config checks the registry)."""
    cfg = load_config(CONFIGS / name, check_paths=False)
    assert cfg.train.output_dir and cfg.data.train_annotations


def test_the_published_recipes_are_there():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    for plan in ("t0.9_s0.9", "t0.8_s0.9", "t0.6_s0.9", "t0.5_s0.7", "t0.4_s0.6"):
        assert f"mvit_b_16x4_stts_{plan}_k400.yaml" in names
    assert {"swin3d_b_stts_t0.5_k400.yaml", "mvit_b_16x4_stts_t0.5_s0.7_ssv2.yaml",
            "mvit_b_16x4_dense_k400.yaml"} <= names
