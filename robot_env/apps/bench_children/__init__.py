"""Programs `robot-env bench` runs in child processes: each is a plain script (no robot_env import
where it must run in another Python, as the anchor does)."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """The file of child program `name` (run by path with another interpreter, or by module)."""
    return os.path.join(HERE, f"{name}.py")
