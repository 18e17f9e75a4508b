"""Control and safety: command channels, the safety layer, the motion limiter and the workspace guard."""
