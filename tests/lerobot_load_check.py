"""Run inside the LeRobot check venv (`tests/lerobot_venv.py`): load a dataset directory with LeRobot's
own `LeRobotDataset` and print, as JSON, what it read, for tests/test_export_lerobot.py to compare
against the recording. ``python lerobot_load_check.py DIR``."""
import json
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def main(root: str) -> None:
    ds = LeRobotDataset("local/robot-env-export", root=Path(root), video_backend="pyav")
    fps = ds.meta.fps
    # a window of frames, as ACT's training asks for: the current frame and the next ones' actions
    windowed = LeRobotDataset("local/robot-env-export", root=Path(root), video_backend="pyav",
                              delta_timestamps={"action": [k / fps for k in range(4)]})
    frames = []
    for i in range(len(ds)):
        item = ds[i]
        row = {"episode_index": int(item["episode_index"]), "frame_index": int(item["frame_index"]),
               "index": int(item["index"]), "timestamp": float(item["timestamp"]), "task": item["task"],
               "state": item["observation.state"].tolist(), "action": item["action"].tolist()}
        for key in ds.meta.video_keys:
            img = item[key]  # (3, h, w) float in [0, 1]
            row[key] = {"shape": list(img.shape), "mean_rgb": img.mean(dim=(1, 2)).tolist(),
                        "pixels": (img.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0).tolist()
                        if i % 10 == 0 else None}
        frames.append(row)
    w = windowed[0]
    out = {"num_frames": ds.num_frames, "num_episodes": ds.num_episodes, "fps": fps,
           "video_keys": list(ds.meta.video_keys), "features": {k: v["dtype"] for k, v in ds.meta.features.items()},
           "stats_keys": sorted(ds.meta.stats), "window_action_shape": list(w["action"].shape),
           "window_pad": w["action_is_pad"].tolist(), "frames": frames}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
