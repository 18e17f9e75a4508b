"""A virtualenv with LeRobot's own dataset loader, to check `robot-env export --lerobot` against it.

LeRobot 0.6.1 (the current release) cannot be installed next to robot-env: it pins torch<2.12 (pip
would fetch PyPI's multi-GB CUDA build; here torch is 2.13.0, CPU) and asks for Python >= 3.12
(this machine's torch wheel is for 3.11). So the check venv is built like this, and says so:

1. ``python3 -m venv VENV && VENV/bin/pip install torch==2.13.0`` (the local CPU build);
2. ``pip install --no-deps --ignore-requires-python lerobot==0.6.1``, then LeRobot's own
   dependencies by its pins (`DEPS`), torch held at 2.13.0 by a constraint (torchvision 0.28,
   torch 2.13's, outside LeRobot's <0.27 pin; the dataset loader does not use it beyond an import);
3. five lines of LeRobot's source are Python 3.12 syntax (PEP 695 ``type`` aliases and generic
   parameter lists), which 3.11 cannot compile: `PATCHES` rewrites each to its 3.11 equivalent
   (a plain alias, ``Generic[...]``), nothing else of LeRobot is changed;
4. torchvision (the local wheels are CUDA builds whose C ops do not load on CPU torch) fails at
   import registering fake kernels for those ops: the two registrations get the guard its others
   have (`TORCHVISION_FAKES`). LeRobot's dataset loader uses no torchvision op.

``python tests/lerobot_venv.py [VENV]`` builds (or reuses) it and prints its python. The default
place is ``~/.cache/robot-env/lerobot-0.6.1`` ($ROBOT_ENV_LEROBOT_VENV overrides it).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

VERSION = "0.6.1"
DEFAULT = Path(os.environ.get("ROBOT_ENV_LEROBOT_VENV", Path.home() / ".cache" / "robot-env" / f"lerobot-{VERSION}"))
DEPS = ["torchvision<0.29", "numpy>=2,<2.3", "datasets>=4.8,<5", "pandas>=2,<3", "pyarrow>=21,<30", "av>=15,<16",
        "huggingface-hub>=1.6,<2", "draccus>=0.11.6,<0.12", "einops>=0.8,<0.9", "safetensors>=0.4.3,<1",
        "packaging>=24.2,<26", "termcolor>=2.4,<4", "tqdm>=4.66,<5", "Pillow>=10,<13", "jsonlines>=4,<5",
        "gymnasium>=1.1.1,<2", "opencv-python-headless>=4.9,<4.14", "requests>=2.32,<3", "fsspec"]
# (file in the lerobot package, 3.12 text, 3.11 text)
PATCHES = [
    ("processor/pipeline.py", "class DataProcessorPipeline[TInput, TOutput](HubMixin):",
     "class DataProcessorPipeline(HubMixin, __import__('typing').Generic[TInput, TOutput]):"),
    ("datasets/streaming_dataset.py", "class Backtrackable[T]:",
     "T = __import__('typing').TypeVar('T')\n\n\nclass Backtrackable(__import__('typing').Generic[T]):"),
    ("utils/io_utils.py", "def deserialize_json_into_object[T: JsonLike](fpath: Path, obj: T) -> T:",
     "def deserialize_json_into_object(fpath: Path, obj: JsonLike) -> JsonLike:"),
]
TYPE_ALIAS = re.compile(r"^type (\w+) = ", re.M)  # motors/motors_bus.py, datasets/aggregate.py
# torchvision's wheels here are built against CUDA torch: their C ops do not load on the CPU build,
# and torchvision then fails at import registering fake kernels for them (its own register_meta
# guards with _has_ops(); these two do not). The guard is added; LeRobot's loader uses none of its ops.
TORCHVISION_FAKES = re.compile(r'^@torch\.library\.register_fake\("(torchvision::\w+)"\)$', re.M)


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path = DEFAULT) -> bool:
    py = _python(venv)
    if not py.exists():
        return False
    code = "import lerobot.datasets.lerobot_dataset, importlib.metadata as m; print(m.version('lerobot'))"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300)
    return out.returncode == 0 and out.stdout.strip() == VERSION


def patch(venv: Path) -> list[str]:
    """Rewrite LeRobot's 3.12-only lines for 3.11; returns what was changed (idempotent)."""
    site = next((venv / "lib").glob("python3.*/site-packages"))
    pkg = site / "lerobot"
    done = []
    for rel, old, new in PATCHES:
        p = pkg / rel
        text = p.read_text()
        if old in text:
            p.write_text(text.replace(old, new))
            done.append(rel)
    for p in pkg.rglob("*.py"):
        text = p.read_text()
        if TYPE_ALIAS.search(text):
            p.write_text(TYPE_ALIAS.sub(r"\1 = ", text))
            done.append(str(p.relative_to(pkg)))
    meta = site / "torchvision" / "_meta_registrations.py"
    if meta.exists():
        text = meta.read_text()
        if TORCHVISION_FAKES.search(text):
            meta.write_text(TORCHVISION_FAKES.sub(
                r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))', text))
            done.append("torchvision/_meta_registrations.py")
    return done


def ensure(venv: Path = DEFAULT, echo=print) -> Path:
    """The check venv's python, built once (pip's output goes to `echo` on failure)."""
    venv = Path(venv)
    if ready(venv):
        return _python(venv)
    py = _python(venv)

    def run(*cmd):
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")

    if not py.exists():
        run(sys.executable, "-m", "venv", str(venv))
    pip = [str(py), "-m", "pip", "install", "-q"]
    run(*pip, "torch==2.13.0")
    run(*pip, "--no-deps", "--ignore-requires-python", f"lerobot=={VERSION}")
    constraints = venv / "torch-constraint.txt"
    constraints.write_text("torch==2.13.0\n")
    run(*pip, "-c", str(constraints), *DEPS)
    patch(venv)
    if not ready(venv):
        raise RuntimeError(f"LeRobot {VERSION} does not import in {venv} after the install")
    return py


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
