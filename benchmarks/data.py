"""Decode-and-augment throughput of the training pipeline: 8x224x224 clips per second.

Generates 340x256 H.264 videos (the Kinetics preprocessing size) and also reads the real
clips in ../shared/data/real-clips when present, then runs the K400 training transform
(dense 8x16 sampling, decode at short side 256 with decord's get_batch, random resized
crop to 224, flip, normalise) through a DataLoader with 1 and 2 workers, for every decoder
(`data.decoder`: decord, PyAV, torchcodec) on the same clips. A single-process profile per decoder splits a clip's time
into opening the file, decoding the sampled frames and the transform: where the time goes.

    python benchmarks/data.py [--clips 64] [--out benchmarks/results/data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from common import RESULTS, save_report
from torch.utils.data import DataLoader

from aim_core.config import load_config
from aim_core.data.annotations import VideoRecord
from aim_core.data.sampling import sample_indices
from aim_core.data.synthetic import write_mp4
from aim_core.data.video import DECODERS, VideoDataset, video_dataset

REAL_CLIPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "real-clips")


def make_videos(folder: str, count: int, frames: int = 300) -> list[VideoRecord]:
    """count H.264 videos of 340x256 at 30 fps with smooth moving content, at about the bitrate of
    Kinetics clips resized to this size (a few hundred KB for 10 s)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:340].astype(np.float32)
    records = []
    for i in range(count):
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 24, 32)).astype(np.float32))
        texture = torch.nn.functional.interpolate(coarse, size=(256, 340), mode="bicubic")[0].permute(1, 2, 0).numpy()
        phase = rng.uniform(0, 2 * np.pi, 3)
        video = np.empty((frames, 256, 340, 3), dtype=np.uint8)
        for t in range(frames):
            wave = 127 + 100 * np.sin(xx[..., None] / 23 + yy[..., None] / 31 + phase + t / 9)
            video[t] = np.clip(0.6 * wave + 0.4 * np.roll(texture, 3 * t, axis=1), 0, 255)
        path = os.path.join(folder, f"video_{i:02d}.mp4")
        write_mp4(path, video, fps=30)
        records.append(VideoRecord(path, 0))
    return records


def clips_per_second(dataset: VideoDataset, workers: int, clips: int) -> float:
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    for _ in range(2 * workers):  # warm up: worker start, first opens
        next(iterator)
    start, done = time.perf_counter(), 0
    while done < clips:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        assert batch["video"].shape[1:] == (8, 3, 224, 224)
        done += 1
    return done / (time.perf_counter() - start)


def profile(dataset: VideoDataset, clips: int) -> dict:
    """Mean seconds per clip spent opening, decoding and transforming, in this process."""
    rng, cfg = np.random.default_rng(0), dataset.cfg
    spent = {"open": 0.0, "decode": 0.0, "transform": 0.0}
    for k in range(clips):
        path = dataset.records[k % len(dataset.records)].path
        start = time.perf_counter()
        reader = dataset.reader.open(path)
        indices = sample_indices(len(reader), cfg.num_frames, cfg.sampling, cfg.frame_interval, True, 1, rng)
        opened = time.perf_counter()
        frames = dataset.reader.read(reader, path, indices)
        decoded = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            dataset.transform(torch.from_numpy(frames).permute(0, 3, 1, 2))
        done = time.perf_counter()
        spent["open"] += opened - start
        spent["decode"] += decoded - opened
        spent["transform"] += done - decoded
    return {f"{key}_seconds_per_clip": value / clips for key, value in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips timed per measurement")
    parser.add_argument("--videos", type=int, default=8, help="generated 340x256 videos")
    parser.add_argument("--out", default=os.path.join(RESULTS, "data.json"))
    args = parser.parse_args()

    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources["generated_340x256_h264"] = make_videos(tmp, args.videos)
        if os.path.isdir(REAL_CLIPS):
            names = sorted(n for n in os.listdir(REAL_CLIPS) if n.endswith((".mp4", ".avi")))
            sources["shared_real_clips"] = [VideoRecord(os.path.join(REAL_CLIPS, n), 0) for n in names]
        report = {"benchmark": "data", "clip": "8x224x224, dense 8x16, decode short side 256",
                  "cpu_cores": os.cpu_count(), "results": {}}
        for name, records in sources.items():
            report["results"][name] = {"videos": len(records)}
            for decoder in DECODERS:
                cfg = load_config("k400_clip_vit_b16_8f", [f"data.decoder={decoder}"])
                dataset = video_dataset(cfg, records, "", train=True)
                result = profile(dataset, min(args.clips, 24))
                for workers in (1, 2):
                    rate = clips_per_second(dataset, workers, args.clips)
                    result[f"workers_{workers}"] = {"clips_per_second": rate,
                                                    "clips_per_second_per_worker": rate / workers}
                report["results"][name][decoder] = result
                print(name, decoder, json.dumps(result), flush=True)
    save_report(report, args.out)


if __name__ == "__main__":
    main()
