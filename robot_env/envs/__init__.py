"""Gymnasium environments and wrappers."""
from .fetch_reach import FetchReachEnv
from .wrappers import LatencyInfo, RecordEpisodes

__all__ = ["FetchReachEnv", "LatencyInfo", "RecordEpisodes"]
