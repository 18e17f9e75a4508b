"""Recording, reading and replaying MCAP files of a server's state and command streams, and plots."""
from .core import (Recorder, Recording, RecordingError, RecordingStats, ReplayResult, SeqCounter,  # noqa: F401
                   read_recording, replay, replay_events)
