"""Scan a dataset for entries that would be skipped in training: `stts data check` calls this.

    report = check_dataset("/data/k400", "val.csv", classes_file="classes.txt")
    for where, reason in report.bad: print(where, reason)      # file (or file:line) and why

Every annotation line is parsed (malformed lines and unknown labels are bad, with file:line) and every
video is opened and decoded to the end (`quick=True`: only the first frame). A video that decodes
some frames and then fails is not bad (training uses it up to the break, see `stts.data.decode`) but
is listed in `report.warnings`, as is a file whose decoded frame count is far below what its
container announces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stts.data.config import DataConfig
from stts.data.decode import DecodeError, _describe, _open

__all__ = ["CheckReport", "check_dataset", "check_video"]


@dataclass
class CheckReport:
    entries: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def check_video(path: str, *, quick: bool = False) -> tuple[int, str | None]:
    """Decode `path` -> (frames decoded, warning or None). Raises DecodeError if no frame decodes."""
    import av

    container, stream, info = _open(path)
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
) -> CheckReport:
    """Parse `annotations` (relative video paths under `root`) and decode every video."""
    from stts.data.datasets import load_annotations

    cfg = DataConfig(
        format=format, root=root, classes_file=classes_file, labels_file=labels_file, video_extension=video_extension
    )
    ann = load_annotations(cfg, annotations)
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
        try:
            _, warning = check_video(path, quick=quick)
        except DecodeError as e:
            report.bad.append((e.path, e.reason))
            continue
        if warning:
            report.warnings.append((path, warning))
    return report
