"""Scan a dataset for entries that would be skipped in training: `stts data check` calls this.

    report = check_dataset("/data/k400", "val.csv", classes_file="classes.txt")
    for where, reason in report.bad: print(where, reason)      # file (or file:line) and why
    report = check_dataset(root, "val.csv", num_frames=16, sampling_rate=4)   # also: videos shorter than a clip

Every annotation line is parsed (malformed lines and unknown labels are bad, with file:line) and every
video is opened and decoded to the end (`quick=True`: only the first frame). A video that decodes
some frames and then fails is not bad (training uses it up to the break, see `stts.data.decode`) but
is listed in `report.warnings`, as is a file whose decoded frame count is far below what its
container announces. With `num_frames`, a video shorter than one clip (it would repeat frames: the
sampling rule's own test, `stts.data.sampling`) is a warning too. An annotation file without a single
entry is a `DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stts.data.config import DataConfig
from stts.data.decode import DecodeError, VideoInfo, _describe, _open
from stts.errors import DataError

__all__ = ["CheckReport", "check_dataset", "check_video"]


@dataclass
class CheckReport:
    entries: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def check_video(path: str, *, quick: bool = False, info_out: list | None = None) -> tuple[int, str | None]:
    """Decode `path` -> (frames decoded, warning or None). Raises DecodeError if no frame decodes.
    info_out: a list that receives the container's VideoInfo (fps, announced frame count)."""
    import av

    container, stream, info = _open(path)
    if info_out is not None:
        info_out.append(info)
    n, warning = 0, None
    try:
        for _ in container.decode(stream):
            n += 1
            if quick:
                break
    except (av.FFmpegError, OSError, ValueError, EOFError, MemoryError) as e:
        warning = f"decode error after {n} frames: {_describe(e)}"
    finally:
        container.close()
    if n == 0:
        raise DecodeError(path, "no decodable frame" if warning is None else warning.replace("after 0 frames", "before the first frame"))
    if not quick and warning is None and info.num_frames and n < 0.9 * info.num_frames - 1:
        warning = f"decoded {n} of the {info.num_frames} frames the container announces"
    return n, warning


def check_dataset(
    root: str,
    annotations: str,
    *,
    format: str = "auto",
    classes_file: str = "",
    labels_file: str = "",
    video_extension: str = ".webm",
    quick: bool = False,
    progress: bool = True,
    num_frames: int | None = None,
    sampling_rate: int = 4,
    sampling: str = "auto",
    target_fps: float = 30.0,
) -> CheckReport:
    """Parse `annotations` (relative video paths under `root`) and decode every video.

    num_frames (with sampling_rate, sampling, target_fps as in DataConfig): also warn about videos too
    short for one clip (quick=True judges by the frame count the container announces)."""
    from stts.data.datasets import load_annotations, resolve_format, resolve_sampling
    from stts.data.sampling import sample_indices

    cfg = DataConfig(
        format=format, root=root, classes_file=classes_file, labels_file=labels_file, video_extension=video_extension,
        sampling=sampling, sampling_rate=sampling_rate, target_fps=target_fps, **({"num_frames": num_frames}
                                                                                  if num_frames else {}),
    )
    ann = load_annotations(cfg, annotations)
    if not ann.num_entries:
        raise DataError(f"{annotations}: no entries (an empty annotation file or folder)")
    rule = resolve_sampling(cfg, resolve_format(cfg, annotations))
    report = CheckReport(entries=ann.num_entries)
    report.bad.extend((e.where, e.reason) for e in ann.errors)
    samples = ann.samples
    if progress:
        try:  # tqdm comes with the `train` extra; without it, no bar
            from tqdm import tqdm

            samples = tqdm(samples, desc="checking", unit="video")
        except ImportError:
            pass
    for path, _ in samples:
        infos: list[VideoInfo] = []
        try:
            n, warning = check_video(path, quick=quick, info_out=infos)
        except DecodeError as e:
            report.bad.append((e.path, e.reason))
            continue
        if warning:
            report.warnings.append((path, warning))
        if num_frames:
            frames = infos[0].num_frames if quick else n
            _, padded = sample_indices(rule, frames, num_frames, sampling_rate, fps=infos[0].fps,
                                       target_fps=target_fps or None, return_padded=True)
            if padded:
                report.warnings.append((path, f"{frames} frames at {infos[0].fps:g} fps: shorter than one "
                                              f"{num_frames}x{sampling_rate} clip ({rule} sampling"
                                              + (f", rate counted at {target_fps:g} fps" if target_fps and rule
                                                 in ("clip", "pyslowfast") else "")
                                              + "), so its clips repeat frames"))
    return report
