"""Hugging Face transformers interop: VideoMAE weights into the stts video ViT.

    from stts.models.hf import vit_from_videomae
    model = vit_from_videomae("checkpoints/videomae-base-finetuned-kinetics")   # a from_pretrained folder
    model = vit_from_videomae(hf_model)                          # a VideoMAEForVideoClassification / VideoMAEModel
    model = vit_from_videomae(state_dict, config=hf_config)      # a state dict + its config (dict or object)
    model = vit_from_videomae(folder, selection="T0_0.5")        # ... with STTS selectors added
    model = stts.create_model("vit_b_16x16", pretrained="videomae/model.safetensors")   # keys converted too

A folder or a state dict needs no transformers install (config.json is JSON, the weights are
safetensors or a torch pickle); only a name that is not a local folder is handed to transformers'
`from_pretrained`. The result matches `VideoMAEForVideoClassification` in eval mode (tests hold it to
1e-4). Input layout differs: transformers takes (B, T, C, H, W), stts (B, C, T, H, W).

What the conversion does (transformers' modeling_videomae.py, read for this):
- `query/key/value` Linears -> one `qkv`; VideoMAE has q and v biases and no k bias (older files
  name them `q_bias` / `v_bias`), the k third of `qkv.bias` is zero;
- `layernorm_before/after` -> `norm1/norm2` with `config.layer_norm_eps` (1e-12 by default), while
  `fc_norm` is a default `nn.LayerNorm` (eps 1e-5) in transformers;
- the fixed 1-D sin-cos table over flattened (t, h, w) positions is not in the weights and is
  recomputed; `use_mean_pooling=False` means final LayerNorm + the first token (there is no class token).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["vit_from_videomae", "videomae_kwargs", "convert_videomae_state_dict", "is_hf_videomae_state_dict"]

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "attention.output.dense.": "attn.proj.",
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
_TOP_MAP = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
    "fc_norm.": "fc_norm.",
    "classifier.": "head.",
}
_DROPPED = ("decoder.", "encoder_to_decoder.", "mask_token", "position_embeddings", "embeddings.position_embeddings")


def is_hf_videomae_state_dict(state_dict: dict) -> bool:
    """True for transformers VideoMAE keys (`videomae.encoder.layer.0...` or `encoder.layer.0...`)."""
    return any(k.startswith(("videomae.", "embeddings.patch_embeddings.")) or _LAYER.match(k) for k in state_dict)


def convert_videomae_state_dict(state_dict: dict) -> dict:
    """transformers VideoMAE (Model / ForVideoClassification / ForPreTraining encoder) keys -> stts ViT."""
    sd = {(k[len("videomae."):] if k.startswith("videomae.") else k): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    attn: dict[int, dict[str, Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(_DROPPED):
            continue
        m = _LAYER.match(k)
        if m:
            i, rest = int(m[1]), m[2]
            if rest.startswith("attention.attention."):
                attn.setdefault(i, {})[rest[len("attention.attention."):]] = v
                continue
            for old, new in _LAYER_MAP.items():
                if rest.startswith(old):
                    out[f"blocks.{i}.{new}{rest[len(old):]}"] = v
                    break
            else:
                raise ValueError(f"unknown VideoMAE key {k!r} (layer {i}: {rest!r})")
            continue
        for old, new in _TOP_MAP.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise ValueError(f"unknown VideoMAE key {k!r}")
    for i, p in sorted(attn.items()):
        try:
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([p["query.weight"], p["key.weight"], p["value.weight"]])
        except KeyError as e:
            raise ValueError(f"VideoMAE layer {i}: attention weight {e.args[0]!r} missing") from None
        q_bias = p.get("query.bias", p.get("q_bias"))
        v_bias = p.get("value.bias", p.get("v_bias"))
        if (q_bias is None) != (v_bias is None):
            raise ValueError(f"VideoMAE layer {i}: found only one of the q and v biases")
        if q_bias is not None:
            k_bias = p.get("key.bias", torch.zeros_like(q_bias))  # no k bias in VideoMAE: zeros are exact
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q_bias, k_bias, v_bias])  # (3C,)
    return out


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"VideoMAE {what}={value}: only square sizes are supported")
        value = value[0]
    return int(value)


def videomae_kwargs(config: Any, num_classes: int | None = None) -> dict:
    """`VisionTransformer3d` kwargs from a VideoMAEConfig (object or dict, e.g. a config.json)."""
    act = _get(config, "hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"VideoMAE hidden_act={act!r}: only the exact 'gelu' of the published models is supported")
    hidden = int(_get(config, "hidden_size", 768))
    mean_pool = bool(_get(config, "use_mean_pooling", True))
    qv_bias = _get(config, "qv_bias", _get(config, "qkv_bias", True))
    if num_classes is None:
        id2label = _get(config, "id2label") or {}
        num_classes = len(id2label) or int(_get(config, "num_labels", 0) or 0)
    return dict(
        num_classes=num_classes,
        in_chans=int(_get(config, "num_channels", 3)),
        num_frames=int(_get(config, "num_frames", 16)),
        img_size=_square(_get(config, "image_size", 224), "image_size"),
        patch_size=_square(_get(config, "patch_size", 16), "patch_size"),
        tubelet_size=int(_get(config, "tubelet_size", 2)),
        embed_dim=hidden,
        depth=int(_get(config, "num_hidden_layers", 12)),
        num_heads=int(_get(config, "num_attention_heads", 12)),
        mlp_ratio=int(_get(config, "intermediate_size", 4 * hidden)) / hidden,
        qkv_bias=bool(qv_bias),
        drop_rate=float(_get(config, "hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(_get(config, "attention_probs_dropout_prob", 0.0)),
        head_drop=0.0,
        pos_embed="sincos",
        class_token=False,
        global_pool="avg" if mean_pool else "token",
        fc_norm=mean_pool,
        eps=float(_get(config, "layer_norm_eps", 1e-12)),
        fc_norm_eps=1e-5,  # transformers builds fc_norm as nn.LayerNorm(hidden_size)
    )


def _read_folder(folder: Path) -> tuple[dict, dict]:
    """(config dict, state dict) of a `save_pretrained` folder, without transformers."""
    config = json.loads((folder / "config.json").read_text())
    files = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():  # sharded weights
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            files = sorted({folder / f for f in weight_map.values()})
            break
    else:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (folder / name).is_file():
                files = [folder / name]
                break
    if not files:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (or sharded index) found")
    sd: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(str(f)))
        else:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return config, sd


def vit_from_videomae(src: Any, *, config: Any = None, selection: Any = None, **overrides):
    """A stts `VisionTransformer3d` with the weights of a Hugging Face VideoMAE.

    Args:
        src: a `save_pretrained` folder, a transformers VideoMAE model, a state dict (give `config`),
            or a Hub name (handed to transformers' `VideoMAEForVideoClassification.from_pretrained`).
        config: the VideoMAEConfig (object or dict) for a state dict; defaults: VideoMAE-B.
        selection: an STTS plan added to the converted model (scorers start untrained).
        **overrides: kwargs for the model, e.g. `drop_path_rate=0.1` for fine-tuning.

    The model is built through `stts.create_model("vit_b_16x16", **kwargs)` with every kwarg given, so
    `stts.save_model` / `stts.load_model` rebuild it exactly.
    """
    from stts.weights import CheckpointError, load_state_dict_checked
    from stts.models._registry import create_model

    if isinstance(src, (str, Path)) and Path(src).is_dir():
        cfg, sd = _read_folder(Path(src))
        config = config or cfg
    elif isinstance(src, (str, Path)):
        try:
            from transformers import VideoMAEForVideoClassification
        except ImportError as e:
            raise ImportError(f"{src!r} is not a local folder; loading it by name needs transformers "
                              "(pip install 'stts-video[hf]')") from e
        hf = VideoMAEForVideoClassification.from_pretrained(str(src))
        config, sd = config or hf.config, hf.state_dict()
    elif isinstance(src, dict):
        sd = src
    elif hasattr(src, "state_dict") and hasattr(src, "config"):
        config, sd = config or src.config, src.state_dict()
    else:
        raise TypeError(f"vit_from_videomae takes a folder, a VideoMAE model or a state dict, got {type(src).__name__}")
    converted = convert_videomae_state_dict(sd)
    head = converted.get("head.weight")
    kwargs = videomae_kwargs(config or {}, num_classes=head.shape[0] if head is not None else 0)
    kwargs.update(overrides)
    if head is not None and kwargs["num_classes"] != head.shape[0]:  # a new head: keep the backbone only
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    model = create_model("vit_b_16x16", selection=selection, **kwargs)
    result = load_state_dict_checked(model, converted, strict=False, source="VideoMAE weights")
    missing = [k for k in result["missing"] if not k.startswith(("selectors.", "head."))]
    if missing or result["unexpected"]:
        raise CheckpointError(f"VideoMAE weights do not fit the converted model: missing {missing[:10]}, "
                              f"unexpected {result['unexpected'][:10]} (is the config right?)")
    return model
