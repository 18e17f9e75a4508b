"""What a Python offers the Gymnasium-Robotics anchor: the versions of the packages the anchor children
(anchor_fetch.py, training/sac_her.py) import, found without importing them (so it takes milliseconds).
Runs in any Python and imports nothing of robot_env. Usage: anchor_probe.py; prints one JSON line."""
import json
import os
import sys

PACKAGES = {  # module -> distribution
    "gymnasium_robotics": "gymnasium-robotics", "mujoco": "mujoco", "gymnasium": "gymnasium", "numpy": "numpy",
    "torch": "torch", "stable_baselines3": "stable-baselines3",
}


def versions() -> dict:
    """{module: version or None} for PACKAGES, plus this Python's executable and version."""
    import importlib.metadata as md
    import importlib.util as iu
    out = {"executable": sys.executable, "python": ".".join(map(str, sys.version_info[:3]))}
    for module, dist in PACKAGES.items():
        try:
            found = iu.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        try:
            out[module] = md.version(dist) if found else None
        except md.PackageNotFoundError:
            out[module] = "unknown"
    return out


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p not in ("", here)]  # our own directory shadows nothing
    print(json.dumps(versions()))
