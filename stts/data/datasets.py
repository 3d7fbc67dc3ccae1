"""Video datasets: annotations + decoding + sampling + transforms, and what happens to bad data.

    ds = build_dataset(cfg, "train")          # ds[i] -> {"video": (C, T, H, W), "label", "index", "bad"}
    ds = build_dataset(cfg, "test")           # one item per (video, view): len = num_videos * num_views
    ds[7]                                     # {"video", "label", "index": 7 // num_views, "view": 7 % num_views, "bad",
                                              #  "padded"}

Bad data (a missing, empty, truncated-to-nothing or undecodable file) never raises out of
`__getitem__`; the item says what happened in `"bad"`, a list of "path: reason" strings:
- training: the bad draw is replaced by another random video (up to `max_retries` times); the item
  is that other video, and `"bad"` lists the draws it replaced;
- evaluation: the item has no `"video"`; `stts.data.collate` drops it from the batch.
Each bad file is logged (logger `stts.data`, WARNING, once per file and process) and remembered, so
a later draw of it costs nothing. `stts.data.loader.VideoLoader` counts the "bad" entries of every
batch in the main process and fails past `max_skip_fraction`.

A video with at least one decodable frame is never bad: a clip longer than the video repeats
its last frames (indices clamped, or looped by the mmaction rule), and a file that breaks mid-way is
used up to the break. Such an item says `"padded": True`; training and evaluation count them.

Unusable annotation lines (malformed, unknown label) are logged with file:line at build time and
left out; more than `max_skip_fraction` of them is an error. Without a classes file every split takes
its classes (names, or the number of integer labels) from the training annotations, so all splits
agree on the class count; a split whose labels are of the other kind is a `DataError`.

Each item's randomness comes from its own generator seeded by (seed, epoch, index, attempt): an item
is the same whichever worker builds it, and two loaders with one seed give identical batches.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stts.data.annotations import (
    Annotations,
    detect_format,
    kinetics_labels,
    read_classes,
    read_folder,
    read_kinetics,
    read_ssv2,
)
from stts.data.config import DataConfig
from stts.data.decode import DecodeError, VideoInfo, decode_all, decode_frames
from stts.data.sampling import sample_indices
from stts.data.transforms import EvalTransform, TrainTransform
from stts.errors import BadDataError, DataError

__all__ = ["VideoDataset", "BadDataError", "build_dataset", "load_annotations", "resolve_format", "resolve_sampling"]

logger = logging.getLogger("stts.data")
SPLITS = ("train", "val", "test")


def _item_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


class VideoDataset(Dataset):
    """Clips of the videos in `samples` (list of (path, label)).

    train=True: one random clip per video per epoch, `TrainTransform`.
    train=False: `num_temporal_views x num_spatial_crops` deterministic views per video, `EvalTransform`;
    item i is video i // num_views, view i % num_views (temporal view = view // num_spatial_crops).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        *,
        train: bool,
        transform,
        sampling: str = "clip",
        num_frames: int = 16,
        sampling_rate: int = 4,
        target_fps: float = 30.0,
        num_temporal_views: int = 1,
        num_spatial_crops: int = 1,
        max_retries: int = 10,
        seed: int = 0,
        cache_decoded: bool = False,
    ):
        self.samples = list(samples)
        self.classes = list(classes)
        self.train = train
        self.transform = transform
        self.sampling = sampling
        self.num_frames, self.sampling_rate, self.target_fps = num_frames, sampling_rate, target_fps
        self.num_temporal_views = 1 if train else num_temporal_views
        self.num_spatial_crops = 1 if train else num_spatial_crops
        self.max_retries = max_retries
        self.seed, self.epoch = seed, 0
        self._known_bad: dict[int, str] = {}  # per process: video index -> reason
        self._cache: tuple | None = None  # (video, temporal view) -> frames: the crops of one clip
        self._decoded: dict[int, tuple] | None = {} if cache_decoded else None  # video -> (all frames, info)

    # --- sizes -------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_videos(self) -> int:
        return len(self.samples)

    @property
    def num_views(self) -> int:
        return self.num_temporal_views * self.num_spatial_crops

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of an item's video."""
        return (3, self.num_frames, self.transform.crop_size, self.transform.crop_size)

    def __len__(self) -> int:
        return self.num_videos * self.num_views

    def set_epoch(self, epoch: int) -> None:
        """Training draws depend on (seed, epoch, index); the loader calls this each epoch."""
        self.epoch = epoch

    # --- loading -----------------------------------------------------------------------------------

    def _decode(self, video: int, view: int, generator: torch.Generator | None) -> tuple[torch.Tensor, bool]:
        """-> (frames (T, H, W, 3) uint8, padded: the clip ran past the video's last frame)."""
        path = self.samples[video][0]
        if video in self._known_bad:
            raise DecodeError(path, self._known_bad[video])
        wanted: list = []

        def indices(info: VideoInfo) -> list[int]:
            idx, padded = sample_indices(
                self.sampling, info.num_frames, self.num_frames, self.sampling_rate,
                fps=info.fps, target_fps=self.target_fps or None,
                view=view, num_views=self.num_temporal_views, generator=generator, return_padded=True,
            )
            wanted[:] = [idx, padded]
            return idx

        try:
            if self._decoded is None:
                frames, info = decode_frames(path, indices)
                last = info.last_index  # the decoder clamps past the last frame that really decodes
            else:
                if video not in self._decoded:
                    self._decoded[video] = decode_all(path)
                every, info = self._decoded[video]  # (N, H, W, 3)
                last = len(every) - 1
                # Past the last decodable frame, repeat it (as decode_frames does for short videos).
                frames = every[torch.as_tensor(list(indices(info)), dtype=torch.long).clamp_(0, last)]
        except DecodeError as e:
            self._known_bad[video] = e.reason
            logger.warning("bad video %s: %s", e.path, e.reason)
            raise
        idx, padded = wanted
        return frames, bool(padded or max(idx) > last)

    def _train_item(self, index: int) -> dict:
        bad: list[str] = []
        video = index
        for attempt in range(self.max_retries + 1):
            g = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, index, attempt))
            if attempt and self.num_videos > 1:
                # Replace the bad draw by a random other video. The draw ignores which videos this
                # process already knows to be bad, so that it does not depend on the worker.
                video = int(torch.randint(self.num_videos - 1, (), generator=g))
                video += video >= index
            try:
                frames, padded = self._decode(video, 0, g)
            except DecodeError as e:
                bad.append(f"{e.path}: {e.reason}")
                continue
            return {"video": self.transform(frames, generator=g), "label": self.samples[video][1], "index": video,
                    "bad": bad, "padded": padded}
        raise BadDataError(
            f"{len(bad)} bad videos in a row while building training item {index} "
            f"(max_retries={self.max_retries}); last: {bad[-3:]}"
        )

    def _eval_item(self, index: int) -> dict:
        video, view = divmod(index, self.num_views)
        temporal, crop = divmod(view, self.num_spatial_crops)
        key = (video, temporal)
        try:
            if self._cache is not None and self._cache[0] == key:
                frames, padded = self._cache[1]
            else:
                frames, padded = self._decode(video, temporal, None)
                self._cache = (key, (frames, padded))
        except DecodeError as e:
            return {"index": video, "view": view, "bad": [f"{e.path}: {e.reason}"]}
        clip = self.transform(frames, crops=[crop] if self.num_spatial_crops > 1 else None)[0]
        return {"video": clip, "label": self.samples[video][1], "index": video, "view": view, "bad": [],
                "padded": padded}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self._train_item(index) if self.train else self._eval_item(index)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(videos={self.num_videos}, classes={self.num_classes}, train={self.train}, "
            f"views={self.num_views}, sampling={self.sampling!r}, frames={self.num_frames}x{self.sampling_rate})"
        )


# ---------------------------------------------------------------------------------------------------
# Building from a DataConfig
# ---------------------------------------------------------------------------------------------------


def resolve_format(cfg: DataConfig, annotations: str) -> str:
    """cfg.format, or for "auto": "folder" for a directory (here or under root), "ssv2" for .json, else "kinetics"."""
    if cfg.format != "auto":
        return cfg.format
    return "folder" if os.path.isdir(_folder(cfg, annotations)) else detect_format(annotations)


def resolve_sampling(cfg: DataConfig, fmt: str) -> str:
    """cfg.sampling, or for "auto": segment for SSv2, stts's clip rule otherwise."""
    if cfg.sampling != "auto":
        return cfg.sampling
    return "segment" if fmt == "ssv2" else "clip"


def _split_annotations(cfg: DataConfig, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = {"train": cfg.train_annotations, "val": cfg.val_annotations, "test": cfg.test_annotations or cfg.val_annotations}[split]
    if not path:
        keys = {"train": "data.train_annotations", "val": "data.val_annotations",
                "test": "data.test_annotations (or data.val_annotations)"}[split]
        raise DataError(f"{keys} is empty: the {split} split needs an annotation file (Kinetics CSV, SSv2 JSON "
                        "or a folder of class folders)")
    return path


def _folder(cfg: DataConfig, path: str) -> str:
    return path if os.path.isabs(path) or os.path.isdir(path) or not cfg.root else os.path.join(cfg.root, path)


def load_annotations(
    cfg: DataConfig, annotations: str, *, fmt: str | None = None, classes_from: str | None = None
) -> Annotations:
    """Read one annotation file (or folder) as `cfg` says. `classes_from`: the training annotations,
    which define the classes when there is no classes file: their sorted names, or for integer labels
    their count (so that a split missing the top class still has all the classes)."""
    fmt = fmt or resolve_format(cfg, annotations)
    classes = read_classes(cfg.classes_file) if cfg.classes_file else None
    if fmt == "kinetics":
        if not os.path.isfile(annotations):
            raise DataError(f"annotation file not found: {annotations}")
        num_classes = cfg.num_classes
        if classes is None and classes_from and os.path.isfile(classes_from):
            train_kind, names = kinetics_labels(classes_from)  # DataError if it mixes integers and names
            own_kind = train_kind if os.path.samefile(classes_from, annotations) else kinetics_labels(annotations)[0]
            if train_kind and own_kind and own_kind != train_kind:
                raise DataError(f"{annotations} has {_KIND_NAMES[own_kind]} labels but the training annotations "
                                f"{classes_from} have {_KIND_NAMES[train_kind]} labels, and no classes file maps "
                                "one to the other: give data.classes_file or use one kind of label")
            if train_kind == "name":
                classes = names
            elif train_kind == "int" and not num_classes:  # data.num_classes, when given, bounds the labels
                num_classes = _integer_class_count(classes_from)
        return read_kinetics(annotations, root=cfg.root, classes=classes, num_classes=num_classes)
    if fmt == "ssv2":
        if not cfg.labels_file:
            raise DataError("data.labels_file is empty: the SSv2 format (data.format=ssv2 or a .json annotation "
                            "file) needs the labels JSON (something-something-v2-labels.json)")
        return read_ssv2(annotations, labels_file=cfg.labels_file, root=cfg.root, video_extension=cfg.video_extension)
    if fmt == "folder":
        if classes is None and classes_from:
            # the training folder's class names, so a val folder missing a class keeps the indices
            train_dir = _folder(cfg, classes_from)
            classes = sorted(d.name for d in os.scandir(train_dir) if d.is_dir()) if os.path.isdir(train_dir) else None
        return read_folder(_folder(cfg, annotations), classes=classes)
    raise ValueError(f"unknown annotation format {fmt!r}")


_KIND_NAMES = {"int": "integer", "name": "class-name"}


def _integer_class_count(path: str) -> int:
    """1 + the largest valid integer label of a Kinetics file."""
    ann = read_kinetics(path)
    return max((y for _, y in ann.samples), default=-1) + 1


def _check_annotation_errors(ann: Annotations, max_fraction: float) -> None:
    for err in ann.errors:
        logger.warning("bad annotation %s", err)
    if not ann.num_entries:
        raise DataError(f"{ann.source}: no entries (an empty annotation file or folder)")
    if not ann.samples:
        raise BadDataError(f"{ann.source}: no usable entries ({len(ann.errors)} bad; first: {[str(e) for e in ann.errors[:3]]})")
    frac = len(ann.errors) / ann.num_entries
    if frac > max_fraction:
        raise BadDataError(
            f"{ann.source}: {len(ann.errors)} of {ann.num_entries} entries ({frac:.1%}) are unusable, "
            f"above max_skip_fraction={max_fraction}; first: {[str(e) for e in ann.errors[:3]]}"
        )


def build_dataset(cfg: DataConfig, split: str, *, seed: int = 0) -> VideoDataset:
    """The dataset of `split` ("train" | "val" | "test") as `cfg` describes it.

    val: one centred clip, centre crop per video. test: `num_temporal_views x num_spatial_crops` views.
    """
    path = _split_annotations(cfg, split)
    fmt = resolve_format(cfg, path)
    ann = load_annotations(cfg, path, fmt=fmt, classes_from=cfg.train_annotations)
    _check_annotation_errors(ann, cfg.max_skip_fraction)
    classes = ann.classes
    if cfg.num_classes and cfg.num_classes != len(classes):
        if cfg.num_classes < len(classes):
            raise DataError(f"data.num_classes={cfg.num_classes} but {path} has {len(classes)} classes")
        classes = classes + [str(i) for i in range(len(classes), cfg.num_classes)]
    sampling = resolve_sampling(cfg, fmt)
    train = split == "train"
    if train:
        transform = TrainTransform(
            cfg.crop_size,
            random_resized_crop=cfg.random_resized_crop,
            rrc_scale=cfg.rrc_scale,
            rrc_ratio=cfg.rrc_ratio,
            jitter_scales=cfg.train_jitter_scales,
            flip=cfg.flip,
            randaug_magnitude=cfg.randaug_magnitude,
            randaug_num_ops=cfg.randaug_num_ops if cfg.randaug else 0,
            randaug_magnitude_std=cfg.randaug_magnitude_std,
            erase_prob=cfg.erase_prob,
            mean=cfg.mean,
            std=cfg.std,
        )
    else:
        crops = cfg.num_spatial_crops if split == "test" else 1
        transform = EvalTransform(cfg.crop_size, cfg.test_short_side, num_crops=crops, mean=cfg.mean, std=cfg.std)
    return VideoDataset(
        ann.samples,
        classes,
        train=train,
        transform=transform,
        sampling=sampling,
        num_frames=cfg.num_frames,
        sampling_rate=cfg.sampling_rate,
        target_fps=cfg.target_fps,
        num_temporal_views=cfg.num_temporal_views if split == "test" else 1,
        num_spatial_crops=cfg.num_spatial_crops if split == "test" else 1,
        max_retries=cfg.max_retries,
        cache_decoded=cfg.cache_decoded,
        seed=seed,
    )
