"""Annotation formats -> a list of (video path, label index) and the class names.

    ann = read_kinetics("train.csv", root="/data/k400", classes=read_classes("classes.txt"))
    ann = read_ssv2("train.json", labels_file="labels.json", root="/data/ssv2/videos")
    ann = read_folder("/data/ucf/train")                     # one sub-folder per class
    ann.samples[0], ann.classes[:3], ann.errors              # ("/data/k400/a.mp4", 12), [...], [...]

- **Kinetics** (PySlowFast's CSV): one `path label` or `path,label` per line, the label an integer or a
  class name; blank lines and `#` comments are skipped, and so is a first line that is a header
  (`path,label`). Names map through `classes` (a classes file: one name per line, index = line);
  without one, the sorted names of the training file define the classes, and a file that mixes
  integer and name labels is an error (which index would a name have?). Files may start with a
  UTF-8 byte-order mark (as spreadsheet exports do).
- **Something-Something v2**: a JSON list of `{"id", "template", ...}` and the labels JSON
  `{"Approaching something with your camera": "0", ...}`. The label is the template with its
  brackets removed (`"Putting [something] on [something]"` -> `"Putting something on something"`), as
  the official labels are written; the video is `<root>/<id><video_extension>` (.webm as shipped).
- **folder**: `<folder>/<class name>/**/<video>`; classes are the sorted sub-folder names (or a
  classes file, which then also fixes the order).

Paths are joined to `root` (an absolute path stays as it is). A line or entry that cannot be used is
not fatal here: it becomes an `AnnotationError("file:line", reason)`, logged by the caller; the
dataset decides whether too many of them is an error (see `stts.data.datasets`). A file that cannot
be used at all (missing, unreadable, duplicate class names, mixed labels) raises `DataError` naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from stts.errors import DataError

__all__ = [
    "AnnotationError",
    "Annotations",
    "read_classes",
    "read_kinetics",
    "read_ssv2",
    "read_folder",
    "kinetics_class_names",
    "kinetics_labels",
    "detect_format",
    "VIDEO_EXTENSIONS",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


@dataclass
class AnnotationError:
    """One unusable annotation: `where` is "file:line" (JSON: "file[entry]"), `reason` one line."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Annotations:
    samples: list[tuple[str, int]]
    classes: list[str]
    errors: list[AnnotationError] = field(default_factory=list)
    source: str = ""

    @property
    def num_entries(self) -> int:
        """Entries read, the unusable ones included (the denominator for their fraction)."""
        return len(self.samples) + len(self.errors)


def _join(root: str | os.PathLike, path: str) -> str:
    return path if os.path.isabs(path) or not root else os.path.join(str(root), path)


def _read_text(path: str | os.PathLike, what: str) -> str:
    """A text file (a leading UTF-8 byte-order mark dropped); DataError naming it if it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None


def read_classes(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored) -> names; index = position."""
    names = [line.strip() for line in _read_text(path, "the classes file").splitlines()]
    names = [n for n in names if n]
    seen: dict[str, int] = {}
    dup = []
    for i, n in enumerate(names):
        if n in seen:
            dup.append(f"{n!r} (entries {seen[n] + 1} and {i + 1})")
        seen.setdefault(n, i)
    if dup:
        raise DataError(f"{path}: duplicate class names: {', '.join(dup[:5])}")
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def _split_line(line: str, known: dict | None = None) -> tuple[str, str] | str:
    """-> (path, label) or an error string. Space-separated lines whose class name has spaces
    ("a.mp4 air drumming") split where the right part is a known class name."""
    if "," not in line and known:
        tokens = line.split()
        for k in range(1, len(tokens)):
            if " ".join(tokens[k:]) in known:
                return " ".join(tokens[:k]), " ".join(tokens[k:])
    if "," in line:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            return (
                f"expected 'path label' or 'path,label', got {len(parts)} comma-separated fields "
                "(the official Kinetics CSV needs converting to 'path label')"
            )
    else:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            return "expected 'path label' or 'path,label', got one field"
    path, label = parts[0].strip(), parts[1].strip()
    if not path or not label:
        return "empty path or label"
    return path, label


def _kinetics_lines(path: str | os.PathLike):
    """Yield (line number, text) of the lines that carry entries."""
    first = True
    for n, raw in enumerate(_read_text(path, "annotation file").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if first:
            first = False
            parts = _split_line(line)
            if isinstance(parts, tuple) and parts[1].lower() in ("label", "class", "label_id"):
                continue  # header
        yield n, line


def _is_int(label: str) -> bool:
    return label.lstrip("-").isdigit()


def kinetics_labels(path: str | os.PathLike) -> tuple[str, list[str]]:
    """The kind of labels a Kinetics file uses -> ("int", []) | ("name", sorted names) | ("", []) if empty.

    Raises DataError when it mixes integer and name labels: without a classes file nothing says which
    index a name has, and guessing would train on wrong labels."""
    ints, names = [], []
    for n, line in _kinetics_lines(path):
        parts = _split_line(line)
        if isinstance(parts, tuple):
            (ints if _is_int(parts[1]) else names).append((n, parts[1]))
    if ints and names:
        show = lambda entries: ", ".join(f"line {n}: {lab!r}" for n, lab in entries[:3])  # noqa: E731
        raise DataError(f"{path}: labels mix integers ({len(ints)} lines; {show(ints)}) and class names "
                        f"({len(names)} lines; {show(names)}), and no classes file says which index a name has: "
                        "give data.classes_file (one name per line, index = line) or use one kind of label")
    if names:
        return "name", sorted({lab for _, lab in names})
    return ("int" if ints else ""), []


def kinetics_class_names(path: str | os.PathLike) -> list[str]:
    """Sorted name labels of a Kinetics file (the classes when there is no classes file); [] for integer
    labels. DataError if it mixes both kinds."""
    return kinetics_labels(path)[1]


def read_kinetics(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike = "",
    classes: list[str] | None = None,
    num_classes: int = 0,
) -> Annotations:
    """Parse a `path label` / `path,label` file. Integer labels must be in [0, num_classes) where
    num_classes is `len(classes)` or the given `num_classes` (0: no upper bound)."""
    path = str(path)
    if classes is None:
        classes = kinetics_class_names(path) or None  # DataError if the labels mix integers and names
    index = {c: i for i, c in enumerate(classes)} if classes else {}
    limit = len(classes) if classes else num_classes
    samples, errors = [], []
    for n, line in _kinetics_lines(path):
        where = f"{path}:{n}"
        parts = _split_line(line, index)
        if isinstance(parts, str):
            errors.append(AnnotationError(where, f"{parts}: {line[:80]!r}"))
            continue
        video, label = parts
        if _is_int(label):
            y = int(label)
            if y < 0 or (limit and y >= limit):
                errors.append(AnnotationError(where, f"label {y} out of range [0, {limit})"))
                continue
        elif label in index:
            y = index[label]
        else:
            errors.append(AnnotationError(where, f"unknown label {label!r} (not in the classes)"))
            continue
        samples.append((_join(root, video), y))
    if classes is None:
        top = max((y for _, y in samples), default=-1) + 1
        classes = [str(i) for i in range(max(num_classes, top))]
    return Annotations(samples, list(classes), errors, path)


def _template_to_label(template: str) -> str:
    return template.replace("[", "").replace("]", "").strip()


def read_ssv2(
    path: str | os.PathLike,
    *,
    labels_file: str | os.PathLike,
    root: str | os.PathLike = "",
    video_extension: str = ".webm",
) -> Annotations:
    """Parse a Something-Something v2 annotation JSON through its labels JSON."""
    path = str(path)
    try:
        labels = json.loads(_read_text(labels_file, "the SSv2 labels JSON"))
    except json.JSONDecodeError as e:
        raise DataError(f"{labels_file}: the SSv2 labels JSON is not valid JSON: {e}") from None
    if not isinstance(labels, dict):
        raise DataError(f"{labels_file}: expected an object {{template: index}}, got {type(labels).__name__}")
    try:
        index = {_template_to_label(k): int(v) for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"{labels_file}: label indices must be integers: {e}") from None
    classes = [""] * (max(index.values(), default=-1) + 1)
    for name, i in index.items():
        classes[i] = name
    try:
        entries = json.loads(_read_text(path, "the SSv2 annotation JSON"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: the SSv2 annotation JSON is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of entries, got {type(entries).__name__}")
    ext = video_extension if video_extension.startswith(".") or not video_extension else "." + video_extension
    samples, errors = [], []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict) or "id" not in entry:
            errors.append(AnnotationError(where, f"entry without an 'id': {str(entry)[:80]}"))
            continue
        template = entry.get("template")
        if not isinstance(template, str):
            errors.append(AnnotationError(where, f"id {entry['id']}: no 'template' (the SSv2 test list has no labels)"))
            continue
        name = _template_to_label(template)
        if name not in index:
            errors.append(AnnotationError(where, f"id {entry['id']}: unknown template {name!r}"))
            continue
        samples.append((_join(root, f"{entry['id']}{ext}"), index[name]))
    return Annotations(samples, classes, errors, path)


def read_folder(folder: str | os.PathLike, *, classes: list[str] | None = None) -> Annotations:
    """Scan `<folder>/<class>/**/<video>`; files without a video extension are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory (folder format expects <folder>/<class>/<videos>)")
    dirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = list(classes) if classes is not None else dirs
    index = {c: i for i, c in enumerate(classes)}
    samples, errors = [], []
    for d in dirs:
        files = sorted(p for p in (folder / d).rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if d not in index:
            errors.extend(AnnotationError(str(p), f"class folder {d!r} not in the classes") for p in files)
            continue
        samples.extend((str(p), index[d]) for p in files)
    return Annotations(samples, classes, errors, str(folder))


def detect_format(annotations: str | os.PathLike) -> str:
    """"folder" for a directory, "ssv2" for .json, else "kinetics"."""
    p = Path(annotations)
    if p.is_dir():
        return "folder"
    if p.suffix.lower() == ".json":
        return "ssv2"
    return "kinetics"
