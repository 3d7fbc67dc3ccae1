"""PySlowFast / STTS checkpoints: the MViT their YAML config describes.

    cfg = official_cfg(torch.load("K400_MVIT_B_16x4_CONV.pyth", weights_only=True))   # the `cfg` YAML, a dict
    model_kwargs_from_official(cfg)     # MViT keyword arguments (MVIT.*, DATA.*, MODEL.*)
    plan_from_official(cfg)             # the STTS plan (MVIT.TIME/SPACE_PRUNING_LOC, ..._LEFT_RATIO, SIGMA)
    model = model_from_official(ckpt)   # the model (None if the file is not a PySlowFast MViT)

Registered as the MViT family's official reader (`stts.load_model` of a `.pyth` file); the weights are
translated by `stts.models.mvit.checkpoint_filter_fn`. The YAML is read with a safe loader that also
takes the one tag yacs writes for tuples: plain data only, never a Python object the file names.
"""

from __future__ import annotations

from stts.models._registry import create_model
from stts.plan import parse_plan

__all__ = ["official_cfg", "model_kwargs_from_official", "plan_from_official", "model_from_official"]


def _cfg_get(cfg: dict, path: str, default=None):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def official_cfg(ckpt: dict) -> dict | None:
    """The PySlowFast config stored in a checkpoint (YAML text under "cfg"), as a dict; None if absent."""
    cfg = ckpt.get("cfg")
    if cfg is None:
        return None
    if isinstance(cfg, str):
        import yaml

        try:
            cfg = yaml.load(cfg, Loader=_yacs_loader())  # noqa: S506 - a SafeLoader, see _yacs_loader
        except yaml.YAMLError as e:
            raise ValueError(f"the PySlowFast config under 'cfg' is not YAML a safe loader reads: "
                             f"{str(e).splitlines()[0]}") from None
    return cfg if isinstance(cfg, dict) else dict(cfg) if hasattr(cfg, "items") else None


def _yacs_loader():
    """yaml's SafeLoader plus the one tag yacs writes for tuples (`!!python/tuple`): builds plain data
    only, never a Python object named by the file (as yaml's FullLoader could)."""
    import yaml

    class YacsLoader(yaml.SafeLoader):
        pass

    YacsLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                               lambda loader, node: tuple(loader.construct_sequence(node)))
    return YacsLoader


def model_kwargs_from_official(cfg: dict) -> dict:
    """MViT keyword arguments from a PySlowFast config dict (MVIT.*, DATA.*, MODEL.*)."""
    mv = cfg.get("MVIT", {})
    unsupported = [k for k in ("REL_POS_SPATIAL", "REL_POS_TEMPORAL", "RESIDUAL_POOLING", "DIM_MUL_IN_ATT")
                   if mv.get(k)]
    if unsupported:
        raise ValueError(f"this checkpoint is an MViT v2 (MVIT.{', MVIT.'.join(unsupported)} set); "
                         "stts implements MViT v1")
    if mv.get("POOL_FIRST"):
        raise ValueError("MVIT.POOL_FIRST=True (pool before the q/k/v projections) is not supported")
    if mv.get("NORM_STEM"):
        raise ValueError("MVIT.NORM_STEM=True is not supported")
    if mv.get("PATCH_2D"):
        raise ValueError("MVIT.PATCH_2D=True is not supported")
    kwargs = dict(
        num_frames=int(_cfg_get(cfg, "DATA.NUM_FRAMES", 16)),
        img_size=int(_cfg_get(cfg, "DATA.TRAIN_CROP_SIZE", 224)),
        in_chans=int((_cfg_get(cfg, "DATA.INPUT_CHANNEL_NUM", [3]) or [3])[0]),
        num_classes=int(_cfg_get(cfg, "MODEL.NUM_CLASSES", 400)),
        head_drop=float(_cfg_get(cfg, "MODEL.DROPOUT_RATE", 0.5)),
        embed_dim=int(mv.get("EMBED_DIM", 96)),
        depth=int(mv.get("DEPTH", 16)),
        num_heads=int(mv.get("NUM_HEADS", 1)),
        mlp_ratio=float(mv.get("MLP_RATIO", 4.0)),
        qkv_bias=bool(mv.get("QKV_BIAS", True)),
        drop_path_rate=float(mv.get("DROPPATH_RATE", 0.1)),
        dim_mul=[list(e) for e in mv.get("DIM_MUL", [])],
        head_mul=[list(e) for e in mv.get("HEAD_MUL", [])],
        pool_q_stride=[list(e) for e in mv.get("POOL_Q_STRIDE", [])],
        pool_kv_stride_adaptive=(list(mv["POOL_KV_STRIDE_ADAPTIVE"])
                                 if mv.get("POOL_KV_STRIDE_ADAPTIVE") is not None else None),
        pool_kv_stride=[list(e) for e in mv.get("POOL_KV_STRIDE", [])] or None,
        pool_kernel=list(mv["POOL_KVQ_KERNEL"]) if mv.get("POOL_KVQ_KERNEL") is not None else None,
        pool_mode=str(mv.get("MODE", "conv")),
        patch_kernel=list(mv.get("PATCH_KERNEL", [3, 7, 7])),
        patch_stride=list(mv.get("PATCH_STRIDE", [2, 4, 4])),
        patch_padding=list(mv.get("PATCH_PADDING", [2, 4, 4])),
        sep_pos_embed=bool(mv.get("SEP_POS_EMBED", False)),
        class_token=bool(mv.get("CLS_EMBED_ON", True)),
    )
    return kwargs


def plan_from_official(cfg: dict):
    """The STTS selection plan of a PySlowFast config (MVIT.TIME/SPACE_PRUNING_LOC, TIME/SPACE_LEFT_RATIO,
    SIGMA), or None for a dense model. The authors' estimator is the diagonal one, so it is kept."""
    mv = cfg.get("MVIT", {})
    parts = []
    for kind, loc_key, ratio_key in (("T", "TIME_PRUNING_LOC", "TIME_LEFT_RATIO"),
                                     ("S", "SPACE_PRUNING_LOC", "SPACE_LEFT_RATIO")):
        locs = mv.get(loc_key)
        if not locs:
            continue
        ratios = list(mv.get(ratio_key) or [])
        if len(ratios) < len(locs):
            raise ValueError(f"MVIT.{loc_key}={locs} needs as many MVIT.{ratio_key} values, got {ratios}")
        parts += [f"{kind}{int(loc)}_{float(r)!r}" for loc, r in zip(locs, ratios)]
    if not parts:
        return None
    return parse_plan("-".join(parts), sigma=float(mv.get("SIGMA", 0.1)), jacobian="diagonal")


def _is_mvit_checkpoint(ckpt: dict, cfg: dict | None) -> bool:
    if cfg is not None:
        model = cfg.get("MODEL", {}) or {}
        return str(model.get("ARCH", "")).lower() == "mvit" or str(model.get("MODEL_NAME", "")) == "MViT"
    return False


def model_from_official(ckpt: dict, **overrides):
    """Build the MViT a PySlowFast/STTS checkpoint describes (its YAML `cfg`); None if it is not one.

    `overrides` replace keyword arguments (e.g. num_classes=174, with strict=False loading).
    """
    cfg = official_cfg(ckpt)
    if not _is_mvit_checkpoint(ckpt, cfg):
        return None
    kwargs = {**model_kwargs_from_official(cfg), **overrides}
    plan = plan_from_official(cfg)
    name = "mvit_b_32x3" if kwargs["num_frames"] == 32 else "mvit_b_16x4"
    return create_model(name, selection=plan, **kwargs)
