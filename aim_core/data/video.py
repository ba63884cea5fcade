"""Video datasets read with decord (or PyAV or torchcodec, `data.decoder`), robust to bad files.

`VideoDataset` decodes only the sampled frames (`VideoReader.get_batch`), resized by the
decoder itself so that the short side is `data.short_side` in training and
`data.input_size` at test time; or, for small sets, every frame once, kept in memory
(`data.decoded_cache_mb`). Training items are one clip (T, C, H, W); test items are all
views (clips x crops, T, C, H, W) for multi-view evaluation.

A missing, truncated or undecodable video is logged once per process with its path and counted.
In training it is replaced by another sample (the item carries `skipped`, the number of bad videos
it stepped over, so counts add up across DataLoader workers and DDP ranks); at test time it is
left out of the evaluation and counted (`collate_readable`), never replaced: another video would
bring its label into the score. Random choices depend
only on (seed, epoch, index), never on the worker that loads the item, so runs are
reproducible and resumable.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from aim_core.config import ConfigError
from aim_core.data.annotations import VideoRecord, read_annotations
from aim_core.data.sampling import sample_indices
from aim_core.data.transforms import TestTransform, as_video, train_transform

log = logging.getLogger(__name__)


class VideoReadError(RuntimeError):
    pass


def probe_size(path: str) -> tuple[int, int]:
    """(height, width) of the first video stream, read from the container header."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.codec_context.height, stream.codec_context.width


def decode_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The (height, width) with the short side at `short_side`, aspect kept."""
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


class PyAVVideo:
    """A video read with PyAV as decord's `VideoReader` is read: its frame count, then `get_frames(indices)`.

    The frames are decoded in order from the first packet up to the last frame asked for (a seek would land on
    the same keyframe for Kinetics-length clips and costs more than it saves), and only the frames asked for are
    converted to RGB at the reduced size, by swscale (bilinear)."""

    def __init__(self, path: str, height: int, width: int):
        import av

        self.path, self.height, self.width = path, height, width
        with av.open(path) as container:
            stream = container.streams.video[0]
            # the container's count where it has one (MP4); else the packets, counted without decoding (WebM)
            self.frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)

    def __len__(self) -> int:
        return self.frames

    def get_frames(self, indices: list[int]) -> np.ndarray:
        import av

        wanted, got = set(indices), {}
        with av.open(self.path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    got[index] = frame.to_ndarray(width=self.width, height=self.height, format="rgb24",
                                                  interpolation="BILINEAR")
                if len(got) == len(wanted):
                    break
        if len(got) < len(wanted):
            raise VideoReadError(f"{self.path}: frame {min(wanted - set(got))} of {self.frames} could not be decoded")
        return np.stack([got[i] for i in indices])


class TorchCodecVideo:
    """A video read with torchcodec, PyTorch's decoder (which decodes on NVIDIA GPUs too), as decord's `VideoReader`
    is read. Frames are placed by the file's index (scanned once, at open), which is exact where the container has
    timestamps (MP4; not an H.264 AVI: tested), and resized by FFmpeg inside the decoder (bilinear, antialiased)."""

    def __init__(self, path: str, height: int, width: int):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        self.decoder = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=1,
                                    transforms=[Resize((height, width))])

    def __len__(self) -> int:
        return len(self.decoder)

    def get_frames(self, indices: list[int]) -> np.ndarray:
        return self.decoder.get_frames_at(indices).data.numpy()


DECODERS = ("decord", "pyav", "torchcodec")


def check_torchcodec() -> None:
    """torchcodec loads FFmpeg's shared libraries at import: without them `data.decoder=torchcodec` cannot work."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"data.decoder=torchcodec, but torchcodec cannot be loaded ({first[:200]}); install it with "
                          f"pip install 'aimfl[torchcodec]' and FFmpeg's shared libraries (apt-get install ffmpeg)"
                          ) from None


class FrameReader:
    """Reads selected frames of a video at a reduced size, with decord, PyAV or torchcodec (`data.decoder`);
    remembers each file's size. At the video's own size PyAV gives exactly the frames of a sequential decode, and so
    do decord and torchcodec except in an H.264 AVI of the shared clips (decord after earlier reads, torchcodec by
    timestamps: tested); resized, the scalers differ by a few levels."""

    def __init__(self, short_side: int, decoder: str = "decord"):
        if decoder not in DECODERS:
            raise ConfigError(f"data.decoder={decoder!r}; choose one of {', '.join(DECODERS)}")
        if decoder == "torchcodec":
            check_torchcodec()
        self.short_side, self.decoder = short_side, decoder
        self._sizes: dict[str, tuple[int, int]] = {}

    def open(self, path: str):
        if not os.path.isfile(path):
            raise VideoReadError(f"{path}: no such file")
        try:
            if path not in self._sizes:
                self._sizes[path] = decode_size(*probe_size(path), self.short_side)
            height, width = self._sizes[path]
            if self.decoder != "decord":
                return (PyAVVideo if self.decoder == "pyav" else TorchCodecVideo)(path, height, width)
            import decord

            return decord.VideoReader(path, width=width, height=height, num_threads=1)
        except Exception as err:  # decord and PyAV raise many types for broken files
            raise VideoReadError(f"{path}: cannot open: {err}") from err

    def frame_bytes(self, path: str) -> int:
        """The bytes of one decoded RGB frame of `path`, opened before."""
        height, width = self._sizes[path]
        return height * width * 3

    @staticmethod
    def read(reader, path: str, indices: np.ndarray) -> np.ndarray:
        try:
            if isinstance(reader, (PyAVVideo, TorchCodecVideo)):
                return reader.get_frames(indices.reshape(-1).tolist())
            return reader.get_batch(indices.reshape(-1).tolist()).asnumpy()
        except VideoReadError:
            raise
        except Exception as err:
            raise VideoReadError(f"{path}: cannot decode frames: {err}") from err


class VideoDataset(Dataset):
    def __init__(self, records: list[VideoRecord], root: str, data_cfg, mean, std, train: bool, seed: int = 0):
        if not records:
            raise ValueError("the dataset is empty: no videos listed")
        self.records = records
        self.root = root or ""
        self.cfg = data_cfg
        self.train = train
        self.seed = seed
        self.reader = FrameReader(data_cfg.short_side if train else data_cfg.input_size, data_cfg.decoder)
        self.transform = train_transform(data_cfg, mean, std) if train else TestTransform(data_cfg, mean, std)
        self._reported: set[str] = set()
        self._decoded: dict[str, np.ndarray] = {}  # path -> every frame, while data.decoded_cache_mb lasts
        self._cache_budget = int(data_cfg.decoded_cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: VideoRecord, rng: np.random.Generator | None = None) -> torch.Tensor:
        """One video as the dataset serves it: a training clip (T, C, H, W), drawn with `rng`, or every test view
        (views, T, C, H, W). Raises `VideoReadError` for a file that cannot be read."""
        path = os.path.join(self.root, record.path)
        reader = self._decoded[path] if path in self._decoded else self.reader.open(path)
        num_frames = len(reader)
        if num_frames < 1:
            raise VideoReadError(f"{path}: no frames")
        cfg = self.cfg
        clips = 1 if self.train else cfg.test_clips
        indices = sample_indices(num_frames, cfg.num_frames, cfg.sampling, cfg.frame_interval, self.train, clips, rng)
        frames = as_video(self.frames(reader, path, indices))
        if self.train:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a seed for every accelerator backend a CUDA
                # build has, formatting the stack for each (about 1 ms a clip served through the DataLoader)
                torch.default_generator.manual_seed(int(rng.integers(2**63)))
                return self.transform(frames).as_subclass(torch.Tensor)
        views = [self.transform(clip) for clip in frames.view(clips, cfg.num_frames, *frames.shape[1:])]
        return torch.cat(views).as_subclass(torch.Tensor)  # (clips * crops, T, C, H, W), clip-major

    def frames(self, reader, path: str, indices: np.ndarray) -> np.ndarray:
        """The frames at `indices` of an open `reader`, or of the frames kept for `path`: (n, H, W, C) uint8.

        With `data.decoded_cache_mb`, a video's first read decodes all of its frames and keeps them while the budget
        lasts, so that later epochs only index them: for small sets, where decoding costs about a fifth of a CPU
        training step (the demo world). The budget is per process: each DataLoader worker keeps its own."""
        if isinstance(reader, np.ndarray):  # kept from an earlier read
            return reader[indices.reshape(-1)]
        if len(reader) * self.reader.frame_bytes(path) > self._cache_budget:  # does not fit: the sampled frames only
            return self.reader.read(reader, path, indices)
        every = self.reader.read(reader, path, np.arange(len(reader)))
        self._cache_budget -= every.nbytes
        self._decoded[path] = every
        return every[indices.reshape(-1)]

    def _report(self, err: VideoReadError, path: str) -> None:
        if path not in self._reported:
            self._reported.add(path)
            log.warning("skipping unreadable video: %s", err)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """A test item by index, or a training clip by (epoch, index): its augmentation is drawn from (seed, epoch,
        index), so the epoch travels with the index from the sampler to whichever worker loads it."""
        if not self.train:
            index = key  # an unreadable test video is left out and counted, never replaced: see collate_readable
            record = self.records[index]
            try:
                video = self.load(record)
            except VideoReadError as err:
                self._report(err, record.path)
                return {"video": None, "label": record.label, "skipped": 1, "index": index}
            return {"video": video, "label": record.label, "skipped": 0, "index": index}
        # a training clip is replaced by another one: the epoch goes on with the same number of clips
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        requested, skipped = index, 0
        for _ in range(self.cfg.max_read_attempts):
            record = self.records[index]
            try:
                video = self.load(record, rng)
            except VideoReadError as err:
                self._report(err, record.path)
                skipped += 1
                index = int(rng.integers(len(self.records)))
                continue
            return {"video": video, "label": record.label, "skipped": skipped, "index": requested}
        raise RuntimeError(
            f"{self.cfg.max_read_attempts} videos in a row could not be read (last: {record.path} under "
            f"{self.root!r}); check the data root (data.root, or data.train_root and data.val_root) and the list"
        )


def collate_readable(items: list[dict]) -> dict:
    """A batch of test items without the unreadable ones; `skipped` counts those left out (the videos of a batch
    may all be unreadable: its `video` is then None)."""
    readable = [item for item in items if item["video"] is not None]
    if readable:
        batch = default_collate(readable)
    else:
        batch = {"video": None, "label": torch.empty(0, dtype=torch.long), "index": torch.empty(0, dtype=torch.long)}
    batch["skipped"] = torch.tensor([sum(item["skipped"] for item in items)])
    return batch


def class_stratified_fraction(records: list[VideoRecord], fraction: float, seed: int) -> list[VideoRecord]:
    """A deterministic subset with `fraction` of each class (at least one video per class)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return records
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.label, []).append(i)
    keep = []
    for label in sorted(by_class):
        members = by_class[label]
        keep += rng.choice(members, size=max(1, round(fraction * len(members))), replace=False).tolist()
    return [records[i] for i in sorted(keep)]


def video_dataset(cfg, records: list[VideoRecord], root: str, train: bool) -> VideoDataset:
    """The training or test dataset of `records` (paths relative to `root`) as the full config `cfg` decodes,
    samples and transforms them."""
    return VideoDataset(records, root, cfg.data, cfg.model.backbone.mean, cfg.model.backbone.std, train=train,
                        seed=cfg.seed)


def build_dataset(cfg, split: str) -> VideoDataset:
    """The train or val dataset of a full config.

    `data.fraction` keeps that fraction of each class of the train list (Fig. 3).
    """
    data = cfg.data
    list_path = data.train_list if split == "train" else data.val_list
    if not list_path:
        raise ConfigError(f"data.{split}_list is not set")
    records = read_annotations(list_path, data.list_format, data.class_names, data.num_classes)
    if split == "train":
        records = class_stratified_fraction(records, data.fraction, cfg.seed)
    return video_dataset(cfg, records, data.train_root if split == "train" else data.val_root, train=split == "train")
