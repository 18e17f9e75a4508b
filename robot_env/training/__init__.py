"""Training and running policies: SAC + HER on the env, policy bundles, the Ray scale-out."""
from ..errors import RobotEnvError

TRAIN_HINT = ("install the train extra: `pip install torch==2.13.0` (or `pip install torch --index-url "
              "https://download.pytorch.org/whl/cpu` for the CPU build), then `pip install -e \".[train]\"`")


def require_sb3() -> None:
    """Stable-Baselines3 and torch, or an error that says how to install them."""
    try:
        import stable_baselines3  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise RobotEnvError(f"{exc.name} is not installed: {TRAIN_HINT}") from None
