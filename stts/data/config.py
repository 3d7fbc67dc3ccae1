"""`DataConfig`: every data setting in one flat dataclass; defaults are the paper's Kinetics MViT-B recipe.

    cfg = DataConfig(root="/data/k400", train_annotations="train.csv", val_annotations="val.csv")
    cfg = DataConfig(format="ssv2", root="/data/ssv2/videos", train_annotations="train.json",
                     val_annotations="validation.json", labels_file="labels.json", flip=False)

The run config nests it as `data:`. Paths to annotation, classes and labels files are relative to the
current directory (or absolute); video paths inside annotations are relative to `root`.
Choices made where the recipe is silent:
- test: short side 224, centre crop 224, 5 temporal clips x 1 crop (MViT-B's Kinetics test views;
  `num_spatial_crops=3` gives the Swin-style left/centre/right crops). The `val` split (validation
  during training) always takes one centred clip and one centre crop: cheap, and comparable over epochs.
- `sampling="auto"`: segment sampling for SSv2, stts's clip rule otherwise. The published recipes
  name the rule their models were tested with: `pyslowfast` (MViT) or `mmaction` (Video Swin); see
  `stts.data.sampling`.
- `flip`: on, as for Kinetics; turn it off for SSv2, whose labels say left and right.
"""

from __future__ import annotations

from dataclasses import dataclass

from stts.data.transforms import KINETICS_MEAN, KINETICS_STD
from stts.errors import ConfigError

__all__ = ["DataConfig", "FORMATS", "SAMPLINGS"]

FORMATS = ("auto", "kinetics", "ssv2", "folder")
SAMPLINGS = ("auto", "clip", "pyslowfast", "mmaction", "segment")


@dataclass
class DataConfig:
    # --- where the data is ---
    format: str = "auto"  # auto | kinetics | ssv2 | folder (auto: directory -> folder, .json -> ssv2)
    root: str = ""  # video paths in the annotations are relative to this
    train_annotations: str = ""  # kinetics: CSV; ssv2: JSON; folder: a directory of class folders
    val_annotations: str = ""
    test_annotations: str = ""  # "" = val_annotations
    classes_file: str = ""  # kinetics / folder: one class name per line (index = line)
    labels_file: str = ""  # ssv2: labels JSON {template: index}
    video_extension: str = ".webm"  # ssv2: a video is <root>/<id><video_extension>
    num_classes: int = 0  # 0 = from the classes / labels / annotations

    # --- temporal sampling ---
    # auto (segment for SSv2, else clip) | clip (stts) | pyslowfast (MViT's test views) | mmaction (Swin's) | segment
    sampling: str = "auto"
    num_frames: int = 16
    sampling_rate: int = 4  # frames between taken frames, counted at target_fps
    target_fps: float = 30.0  # 0 = the video's own rate (mmaction sampling ignores it: source frames)

    # --- spatial: training ---
    crop_size: int = 224
    random_resized_crop: bool = True
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 4 / 3)
    train_jitter_scales: tuple[int, int] = (256, 320)  # short side; used when random_resized_crop=False
    flip: bool = True

    # --- spatial: test ---
    test_short_side: int = 224
    num_temporal_views: int = 5  # test split only; val takes 1
    num_spatial_crops: int = 1  # 1 (centre) or 3 (left/centre/right); test split only

    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    # --- augmentation (training) ---
    randaug: bool = True
    randaug_magnitude: int = 7
    randaug_num_ops: int = 4
    randaug_magnitude_std: float = 0.5
    erase_prob: float = 0.25
    mixup_alpha: float = 0.8  # 0 disables
    cutmix_alpha: float = 1.0  # 0 disables
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1

    # --- loading ---
    num_workers: int = 8  # per process
    pin_memory: bool = True  # only when CUDA is available
    max_skip_fraction: float = 0.1  # fail when more than this fraction of the samples seen are bad
    skip_check_after: int = 100  # ... judged once this many samples were seen (and at each epoch's end)
    max_retries: int = 10  # training: bad draws replaced before one item gives up
    # Keep every decoded video in memory (per process) after its first decode: for small datasets such
    # as the demo's, where decoding every epoch would cost as much as training. Workers are re-forked
    # each pass, so the cache lasts across epochs only with num_workers=0.
    cache_decoded: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"DataConfig.format: unknown value {self.format!r}; expected one of {FORMATS}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"DataConfig.sampling: unknown value {self.sampling!r}; expected one of {SAMPLINGS}")
        if self.num_spatial_crops not in (1, 3):
            raise ConfigError(f"DataConfig.num_spatial_crops: expected 1 or 3, got {self.num_spatial_crops}")
        for name in ("num_frames", "sampling_rate", "crop_size", "num_temporal_views", "test_short_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DataConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.test_short_side < self.crop_size:
            raise ConfigError(
                f"DataConfig.test_short_side ({self.test_short_side}) must be >= crop_size ({self.crop_size})"
            )
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"DataConfig.max_skip_fraction: must be in [0, 1], got {self.max_skip_fraction}")
        # YAML gives lists; keep tuples so configs compare equal however they were made.
        for name in ("rrc_scale", "rrc_ratio", "train_jitter_scales", "mean", "std"):
            setattr(self, name, tuple(getattr(self, name)))
