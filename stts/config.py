"""Run configuration: five small dataclasses, defaults = the paper's MViT-B STTS fine-tuning recipe.

    cfg = load_config("configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml", ["optim.lr=2e-4", "train.epochs=5"])
    cfg.optim.lr, cfg.data.num_frames, cfg.model.name           # typed values
    to_dict(cfg)                                                   # plain data (checkpoints, config.yaml)

Layers, later wins: the dataclass defaults, an optional `base` dict (the config saved in a checkpoint),
the YAML file, then `key=value` overrides (values are parsed as YAML: `train.amp=bf16`,
`data.rrc_scale=[0.2,1.0]`). OmegaConf's structured configs check keys and types; `validate` checks
ranges, names and plans. Every error is a `ConfigError` naming where the value came from, the key and
the value: `configs/x.yaml: optim.lr=-0.1: must be > 0`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from stts.data.config import DataConfig
from stts.errors import ConfigError

__all__ = ["ModelConfig", "OptimConfig", "TrainConfig", "EvalConfig", "RunConfig", "ConfigError",
           "load_config", "to_dict", "AMP_MODES"]

AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class ModelConfig:
    name: str = ""  # a registry name (stts list-models); required
    # plan added to a dense name, e.g. "T0_0.5-S4_0.7", or a range to train elastically ("T0_0.25:0.75");
    # for a published variant, other amounts at its own points; "" = the name's own
    selection: str = ""
    num_classes: int = 0  # 0 = the dataset's
    # null = the registered variant's own value, which is the published one (MViT-B: 0.2 / 0.5)
    drop_path_rate: Optional[float] = None
    head_dropout: Optional[float] = None
    sigma: Optional[float] = 0.1  # perturbed top-K noise at step 0 (published MViT: 0.1); null = model's
    num_samples: int = 500
    jacobian: str = ""  # "" = model's default; "full" | "diagonal"
    variance_reduction: str = ""  # "" = model's default; "none" | "loo" | "antithetic" | "loo+antithetic"
    # learned (the STTS scorers) | uniform | random | change | saliency: training-free, no scorers (stts.policies);
    # training under one fine-tunes the backbone on the tokens it keeps (no scorer-only warm-up)
    policy: str = "learned"
    finetune: str = ""  # dense / official / stts checkpoint to start from (non-strict: scorers start fresh)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # other builder kwargs (depth, embed_dim, ...)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # base lr (the scorers'); not rescaled with the batch size
    min_lr: float = 1e-6  # cosine floor
    warmup_epochs: float = 3.0  # linear lr warm-up from warmup_start_lr
    warmup_start_lr: float = 1e-6
    weight_decay: float = 0.05  # none on 1-D params and model.no_weight_decay()
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scorer_warmup_epochs: int = 3  # only the scorers train (backbone frozen)
    backbone_lr_mult: float = 0.1  # backbone lr = this x lr after the scorer warm-up
    clip_grad: float = 1.0  # max grad norm; 0 = off


@dataclass
class TrainConfig:
    output_dir: str = "runs/stts"
    epochs: int = 20
    batch_size: int = 16  # per process
    accum_steps: int = 1  # micro-batches per optimizer step
    amp: str = "auto"  # auto (bf16 if the GPU has it, else fp16; off on CPU) | off | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    seed: int = 0
    sigma_decay: bool = True  # sigma decays linearly to 0 over all training steps
    eval_every: int = 1  # epochs between validations; 0 = never
    save_every_steps: int = 0  # also write last.pt every N optimizer steps mid-epoch; 0 = epoch ends only
    resume: str = ""  # "" | auto (output_dir/last.pt if present) | a checkpoint path
    max_steps: int = 0  # stop (and checkpoint) after this many optimizer steps in all; 0 = all epochs
    log_every: int = 20  # optimizer steps between log lines
    progress: bool = True  # tqdm bar (rank 0)
    tensorboard: bool = True
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # Distillation (stts.engine.distill): a frozen teacher's softened logits join the loss,
    # (1 - w) * CE + w * T^2 * KL. "" = off; "finetune" = the model.finetune checkpoint; or a checkpoint path.
    distill_from: str = ""
    distill_weight: float = 0.5  # w
    distill_temperature: float = 1.0  # T
    # torch.compile the training forward; the selectors' noisy top-K stays eager (an elastic plan compiles
    # once per budget it draws: K is static in a graph)
    compile: bool = False


@dataclass
class EvalConfig:
    checkpoint: str = ""  # "" = <output_dir>/best.pt
    split: str = "test"  # test: data.num_temporal_views x num_spatial_crops views; val: one view
    batch_size: int = 0  # 0 = train.batch_size
    average: str = "logits"  # average the views' logits | softmax
    report: str = ""  # JSON report path; "" = <output_dir>/eval_<split>.json


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------------


def _flatten(d: dict, schema, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [(dotted key, value)], descending only into sections of the schema."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        node = OmegaConf.select(schema, key) if isinstance(v, dict) else None
        if isinstance(v, dict) and isinstance(node, DictConfig) and OmegaConf.get_type(node) is not dict:
            out += _flatten(v, schema, key + ".")
        else:
            out.append((key, v))
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    from omegaconf import OmegaConf

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"command line: {item!r}: expected key=value, e.g. optim.lr=1e-4")
    if not raw.strip():  # `data.classes_file=`: the empty string (YAML would read null), no quoting needed
        return key.strip(), ""
    # OmegaConf's YAML reading of the value: 1e-4 is a float, [1,2] a list, null None.
    return key.strip(), OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]


def load_config(path: "str | Path | None" = None, overrides: "list[str] | tuple" = (), *,
                base: dict | None = None, base_source: str = "checkpoint", check_paths: bool = True) -> RunConfig:
    """Defaults <- base <- YAML file <- key=value overrides, validated. Raises ConfigError.

    check_paths: also require model.finetune and train.resume files to exist (training needs them,
    evaluation does not)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cfg = OmegaConf.structured(RunConfig)
    layers: list[tuple[str, list]] = []
    if base:
        layers.append((base_source, _flatten(base, cfg)))
    if path is not None:
        try:  # OmegaConf's YAML reading (1e-4 is a float), without resolving interpolations
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, train, eval)")
        layers.append((str(path), _flatten(data or {}, cfg)))
    layers.append(("command line", [_parse_override(o) for o in overrides]))
    sources: dict[str, str] = {}
    for source, items in layers:
        for key, value in items:
            try:
                OmegaConf.update(cfg, key, value, merge=True)
            except OmegaConfBaseException as e:
                why = str(e).splitlines()[0]
                if isinstance(e, (ConfigKeyError, ConfigAttributeError)):  # unknown key: list the section's keys
                    section = key.rpartition(".")[0]
                    while section and not hasattr(OmegaConf.select(cfg, section), "keys"):
                        section = section.rpartition(".")[0]
                    names = list((OmegaConf.select(cfg, section) if section else cfg).keys())
                    why = f"unknown key; {section or 'the config'} has: {', '.join(names)}"
                raise ConfigError(f"{source}: {key}={value!r}: {why}") from None
            sources[key] = source
    try:
        run = OmegaConf.to_object(cfg)
    except ValueError as e:  # DataConfig.__post_init__: "DataConfig.<field>: ..."
        m = re.match(r"DataConfig\.(\w+)", str(e))
        key = f"data.{m[1]}" if m else "data"
        value = OmegaConf.select(cfg, key)
        raise ConfigError(f"{_source(sources, key)}: {key}={value!r}: {e}") from None
    validate(run, sources, check_paths=check_paths)
    return run


def _source(sources: dict, key: str) -> str:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return "defaults"


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (lists for tuples): what checkpoints and config.yaml store."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------------------------
# Semantic checks: ranges, names, plans.


def validate(cfg: RunConfig, sources: dict | None = None, *, check_paths: bool = True) -> None:
    """Raise ConfigError for the first bad value (each check names its key)."""
    sources = sources or {}

    def fail(key: str, why: str):
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        raise ConfigError(f"{_source(sources, key)}: {key}={value!r}: {why}")

    def check(key: str, ok: bool, why: str):
        if not ok:
            fail(key, why)

    m, o, t, e = cfg.model, cfg.optim, cfg.train, cfg.eval
    # --- model ---
    if not m.name:
        fail("model.name", "required: a registered model (see `stts list-models`)")
    from stts.models import model_entry

    try:
        entry = model_entry(m.name)
    except ValueError as err:
        fail("model.name", str(err))
    if m.selection:
        from stts.plan import parse_plan

        try:
            parse_plan(m.selection)
        except (ValueError, TypeError) as err:
            fail("model.selection", str(err))
        check("model.selection", entry.plan is None or parse_plan(m.selection).points == entry.plan.points,
              f"{m.name} already selects tokens at {'-'.join(entry.plan.points) if entry.plan else ''} "
              f"({entry.plan}); model.selection may change how much those points keep, not where: give a "
              "dense model name for other points")
    check("model.num_classes", m.num_classes >= 0, "must be >= 0 (0 = the dataset's)")
    check("model.drop_path_rate", m.drop_path_rate is None or 0 <= m.drop_path_rate < 1, "must be in [0, 1) or null")
    check("model.head_dropout", m.head_dropout is None or 0 <= m.head_dropout < 1, "must be in [0, 1) or null")
    check("model.sigma", m.sigma is None or m.sigma >= 0, "must be >= 0 (or null)")
    check("model.num_samples", m.num_samples >= 1, "must be >= 1")
    check("model.jacobian", m.jacobian in ("", "full", "diagonal"), "expected '', 'full' or 'diagonal'")
    from stts.topk import VARIANCE_REDUCTIONS

    check("model.variance_reduction", m.variance_reduction in ("", *VARIANCE_REDUCTIONS),
          f"expected '' or one of {', '.join(VARIANCE_REDUCTIONS)}")
    check("model.variance_reduction", "loo" not in m.variance_reduction or m.num_samples >= 2,
          f"a leave-one-out baseline needs model.num_samples >= 2, got {m.num_samples}")
    from stts.policies import POLICIES

    check("model.policy", m.policy in POLICIES, f"expected one of {', '.join(POLICIES)}")
    check("model.policy", m.policy == "learned" or bool(m.selection) or entry.plan is not None,
          f"a training-free policy scores the selectors of a plan, and {m.name} has none: give model.selection")
    check("model.finetune", not (check_paths and m.finetune) or Path(m.finetune).is_file(), "no such file")
    # --- optim ---
    check("optim.lr", o.lr > 0, "must be > 0")
    check("optim.min_lr", 0 <= o.min_lr <= o.lr, f"must be in [0, optim.lr={o.lr}]")
    check("optim.warmup_start_lr", o.warmup_start_lr >= 0, "must be >= 0")
    check("optim.warmup_epochs", 0 <= o.warmup_epochs <= t.epochs, f"must be in [0, train.epochs={t.epochs}]")
    check("optim.weight_decay", o.weight_decay >= 0, "must be >= 0")
    check("optim.betas", all(0 <= b < 1 for b in o.betas), "each must be in [0, 1)")
    check("optim.eps", o.eps > 0, "must be > 0")
    check("optim.scorer_warmup_epochs", 0 <= o.scorer_warmup_epochs < t.epochs,
          f"must be in [0, train.epochs={t.epochs}) so that the backbone trains too")
    check("optim.backbone_lr_mult", o.backbone_lr_mult >= 0, "must be >= 0")
    check("optim.clip_grad", o.clip_grad >= 0, "must be >= 0 (0 = off)")
    # --- train ---
    for key in ("epochs", "batch_size", "accum_steps", "log_every"):
        check(f"train.{key}", getattr(t, key) >= 1, "must be >= 1")
    for key in ("eval_every", "save_every_steps", "max_steps", "threads", "seed"):
        check(f"train.{key}", getattr(t, key) >= 0, "must be >= 0")
    check("train.amp", t.amp in AMP_MODES, f"expected one of {AMP_MODES}")
    check("train.device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
          "expected auto, cpu, cuda or cuda:N")
    check("train.output_dir", bool(t.output_dir), "must not be empty")
    check("train.resume", t.resume in ("", "auto") or not check_paths or Path(t.resume).is_file(),
          "expected '', auto or an existing file")
    check("train.distill_from", t.distill_from != "finetune" or bool(m.finetune),
          "'finetune' takes the teacher from model.finetune, which is not set")
    check("train.distill_from", t.distill_from in ("", "finetune") or not check_paths or Path(t.distill_from).is_file(),
          "expected '', finetune or an existing checkpoint")
    check("train.distill_weight", 0 <= t.distill_weight <= 1, "must be in [0, 1]")
    check("train.distill_temperature", t.distill_temperature > 0, "must be > 0")
    # --- eval ---
    check("eval.split", e.split in ("val", "test"), "expected 'val' or 'test'")
    check("eval.batch_size", e.batch_size >= 0, "must be >= 0 (0 = train.batch_size)")
    check("eval.average", e.average in ("logits", "softmax"), "expected 'logits' or 'softmax'")
