"""`robot-env export FILE.mcap... --lerobot DIR`: recordings to a LeRobotDataset (v3.0), saying on
stderr what was left out. Exit 0 when everything was exported, 3 when some of it was left out, 2
when nothing could be (then nothing is written)."""
from __future__ import annotations

import sys

EXIT = ("Exit status: 0 everything exported; 3 exported what is intact, with the rest left out (said on stderr: a "
        "damaged or cut file, an episode without a camera's images, a hole in the states); 2 nothing exported "
        "(no readable recording, no episode, DIR exists), and nothing written.")


def run_export(files, lerobot: str, fps=None, task=None, cameras=None, codec=None) -> int:
    from ..recording.lerobot import export_lerobot

    result = export_lerobot(files, lerobot, fps=fps, task=task, cameras=cameras, codec=codec)
    for line in result.notes:
        print(f"robot-env: note: {line}", file=sys.stderr)
    for line in result.skipped:
        print(f"robot-env: left out: {line}", file=sys.stderr)
    print(result, flush=True)
    return 3 if result.skipped else 0
