"""Video annotation lists in the formats people already have.

- `list`: one `path label [group]` per line, as in mmaction2 (blank lines and `#` comments
  are skipped). The label is a class index, or a class name when class names are given;
  the optional group (a site or uploader id) feeds natural federated partitions.
- `kinetics_csv`: the official Kinetics-400/700 CSV `label,youtube_id,time_start,time_end,split`.
  Files are expected as `<youtube_id>_<start:06d>_<end:06d>.mp4` (the layout of the common
  download scripts); classes are indexed alphabetically, the standard order.
- `ssv2_json`: Something-Something-v2 annotations (`id`, `template`) with its labels JSON.
- `diving48_json`: Diving-48 annotations (`vid_name`, `label`).

Paths stay relative to the dataset root; `VideoDataset` joins them.
A malformed entry raises `AnnotationError` naming the file and line (or entry).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from dataclasses import dataclass


class AnnotationError(ValueError):
    pass


@dataclass(frozen=True)
class VideoRecord:
    path: str
    label: int
    group: str | None = None  # site or uploader id, for natural partitions


FORMATS = ("auto", "list", "kinetics_csv", "ssv2_json", "diving48_json")


def read_class_names(path: str) -> list[str]:
    """One class name per line (`classes.txt`), or a JSON list, or an SSv2 `{name: index}` map."""
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            return [name for name, _ in sorted(data.items(), key=lambda item: int(item[1]))]
        return [str(name) for name in data]
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def class_names_of(data_cfg) -> list[str]:
    """The class names of a data config: from `data.class_names`, else the class indices as text."""
    if data_cfg.class_names:
        return read_class_names(data_cfg.class_names)
    return [str(k) for k in range(data_cfg.num_classes)]


def detect_format(path: str) -> str:
    if path.endswith(".csv"):
        return "kinetics_csv"
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        first = data[0] if isinstance(data, list) and data else {}
        if "template" in first:
            return "ssv2_json"
        if "vid_name" in first:
            return "diving48_json"
        raise AnnotationError(f"{path}: JSON entries have neither 'template' (SSv2) nor 'vid_name' (Diving-48)")
    return "list"


def read_path_label_list(path: str, class_names: list[str] | None = None,
                         num_classes: int | None = None) -> list[VideoRecord]:
    index = {name: i for i, name in enumerate(class_names or [])}
    limit = num_classes or (len(class_names) if class_names else None)
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            if len(fields) not in (2, 3):
                raise AnnotationError(f"{path}:{number}: expected 'path label [group]', got {text!r}")
            label = fields[1]
            if label.lstrip("-").isdigit():
                value = int(label)
            elif label in index:
                value = index[label]
            else:
                raise AnnotationError(f"{path}:{number}: label {label!r} is neither a class index nor a known class "
                                      "name")
            if value < 0 or (limit and value >= limit):
                raise AnnotationError(f"{path}:{number}: label {value} is out of range: the config has {limit} classes "
                                      f"(data.num_classes), labels go from 0 to {limit - 1}")
            records.append(VideoRecord(fields[0], value, fields[2] if len(fields) == 3 else None))
    return records


def read_kinetics_csv(path: str, class_names: list[str] | None = None,
                      num_classes: int | None = None) -> list[VideoRecord]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if not needed <= set(reader.fieldnames or ()):
            raise AnnotationError(f"{path}:1: Kinetics CSV header needs {sorted(needed)}, got {reader.fieldnames}")
        rows = list(reader)
    names = class_names or sorted({row["label"] for row in rows})
    if num_classes and len(names) > num_classes:
        raise AnnotationError(f"{path}: {len(names)} classes, but the config has data.num_classes={num_classes}")
    if not class_names and num_classes and len(names) < num_classes:
        # indices come from the alphabetical order of the classes present: a class missing here would shift every
        # later index against the training list's
        raise AnnotationError(f"{path}: only {len(names)} of data.num_classes={num_classes} classes appear, so their "
                              "alphabetical indices would not match the other list's; set data.class_names to a file "
                              "of all class names")
    index = {name: i for i, name in enumerate(names)}
    records = []
    for number, row in enumerate(rows, start=2):
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError) as err:
            raise AnnotationError(f"{path}:{number}: bad time_start/time_end: {err}") from err
        if row["label"] not in index:
            raise AnnotationError(f"{path}:{number}: unknown class {row['label']!r}")
        name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        records.append(VideoRecord(name, index[row["label"]]))
    return records


def read_ssv2_json(path: str, class_names: list[str] | None) -> list[VideoRecord]:
    if not class_names:
        raise AnnotationError(f"{path}: SSv2 annotations need data.class_names pointing to labels.json")
    labels = {name: i for i, name in enumerate(class_names)}
    with open(path) as f:
        entries = json.load(f)
    records = []
    for number, entry in enumerate(entries):
        try:
            name = entry["template"].replace("[", "").replace("]", "")
            records.append(VideoRecord(f"{entry['id']}.webm", labels[name]))
        except KeyError as err:
            raise AnnotationError(f"{path}: entry {number}: missing or unknown {err}") from err
    return records


def read_diving48_json(path: str, num_classes: int | None = None) -> list[VideoRecord]:
    with open(path) as f:
        entries = json.load(f)
    records = []
    for number, entry in enumerate(entries):
        try:
            records.append(VideoRecord(f"{entry['vid_name']}.mp4", int(entry["label"])))
        except (KeyError, TypeError, ValueError) as err:
            raise AnnotationError(f"{path}: entry {number}: bad or missing {err}") from err
        if not 0 <= records[-1].label < (num_classes or math.inf):
            raise AnnotationError(f"{path}: entry {number}: label {records[-1].label} is out of range: the config "
                                  f"has data.num_classes={num_classes}")
    return records


@contextlib.contextmanager
def _reading(path: str):
    """Undecodable text or JSON in `path` becomes an `AnnotationError` naming the file (and line)."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from err


def read_annotations(path: str, fmt: str = "auto", class_names: str | None = None,
                     num_classes: int | None = None) -> list[VideoRecord]:
    """Reads an annotation file into records; `class_names` is a class-name file (or SSv2 labels.json). A label
    at or above `num_classes` is an error naming its line."""
    if fmt not in FORMATS:
        raise AnnotationError(f"data.list_format={fmt!r}; choose one of {', '.join(FORMATS)}")
    for name in filter(None, (path, class_names)):
        if not os.path.isfile(name):
            raise AnnotationError(f"annotation file {name} does not exist")
    names = None
    if class_names:
        with _reading(class_names):
            names = read_class_names(class_names)
    with _reading(path):
        fmt = detect_format(path) if fmt == "auto" else fmt
        if fmt == "ssv2_json":
            records = read_ssv2_json(path, names)
        elif fmt == "diving48_json":
            records = read_diving48_json(path, num_classes)
        else:
            reader = read_kinetics_csv if fmt == "kinetics_csv" else read_path_label_list
            records = reader(path, names, num_classes)
    if not records:
        raise AnnotationError(f"{path}: no videos listed")
    return records


def write_path_label_list(path: str, records: list[VideoRecord]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(f"{r.path} {r.label}" + (f" {r.group}" if r.group else "") + "\n")
