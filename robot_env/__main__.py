"""`python -m robot_env ...` is the `robot-env` command (how spawned servers and emulators are started)."""
import sys

from .apps.cli import main

sys.exit(main())
