"""Video data: PyAV decoding, clip/segment sampling, tensor augmentation, datasets, loaders.

    from stts.data import DataConfig, build_dataset, build_loader, MixupCutmix
    cfg = DataConfig(root="/data/k400", train_annotations="train.csv", val_annotations="val.csv",
                     classes_file="classes.txt")
    train = build_loader(build_dataset(cfg, "train"), cfg, batch_size=16, train=True, seed=0)
    mix = MixupCutmix(train.dataset.num_classes)          # mixup 0.8 / cutmix 1.0 / smoothing 0.1
    for batch in train:
        video, target = mix(batch["video"], batch["label"])   # (B, C, T, H, W), (B, num_classes)

Items (`VideoDataset[i]`):
- train: {"video": float (C, T, H, W) normalised, "label": int, "index": int, "bad": [str], "padded": bool}
- val / test: one item per (video, view): {"video", "label", "index": video index, "view": view index,
  "bad": [str], "padded": bool}, len = num_videos * num_views; average the predictions per "index". A bad
  video's eval items have no "video" and one "bad" entry. "padded": the clip ran past the end of a short
  video (frames repeated); training and evaluation count these.
Batches (`collate`): the default-collated keys plus "bad" (list of "path: reason") and "num_bad" (int).
The loader counts them in the main process and raises `BadDataError` past `max_skip_fraction`
(see `stts.data.loader` and `stts.data.datasets` for the policy: training replaces a bad sample, evaluation
leaves it out; a video with at least one decodable frame is not bad).

Modules: decode (PyAV), sampling (frame indices: stts's, PySlowFast's and mmaction2's rules),
transforms + randaugment (tensor ops), mixup, annotations (Kinetics CSV, SSv2 JSON, folders), datasets,
loader, synth (a synthetic dataset), check.
PyAV is imported inside the functions that decode, so importing this package does not load it.
"""

from stts.data.annotations import AnnotationError, Annotations, read_classes, read_folder, read_kinetics, read_ssv2
from stts.data.config import DataConfig
from stts.data.datasets import BadDataError, VideoDataset, build_dataset
from stts.data.decode import DecodeError, VideoInfo, decode_frames, probe
from stts.data.loader import DistributedEvalSampler, SkipStats, VideoLoader, build_loader, collate
from stts.data.mixup import MixupCutmix
from stts.data.randaugment import RandAugment
from stts.data.sampling import clip_indices, mmaction_indices, pyslowfast_indices, sample_indices, segment_indices
from stts.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "DataConfig",
    "build_dataset",
    "build_loader",
    "MixupCutmix",
    "VideoDataset",
    "VideoLoader",
    "BadDataError",
    "DecodeError",
    "VideoInfo",
    "SkipStats",
    "DistributedEvalSampler",
    "collate",
    "decode_frames",
    "probe",
    "clip_indices",
    "pyslowfast_indices",
    "mmaction_indices",
    "segment_indices",
    "sample_indices",
    "TrainTransform",
    "EvalTransform",
    "RandAugment",
    "AnnotationError",
    "Annotations",
    "read_classes",
    "read_kinetics",
    "read_ssv2",
    "read_folder",
    "make_synthetic_dataset",
    "check_dataset",
]


def __getattr__(name):
    # synth and check pull in the encoder / tqdm; load them on first use.
    if name == "make_synthetic_dataset":
        from stts.data.synth import make_synthetic_dataset

        return make_synthetic_dataset
    if name == "check_dataset":
        from stts.data.check import check_dataset

        return check_dataset
    raise AttributeError(f"module 'stts.data' has no attribute {name!r}")
