"""The tools: demo, monitor, soak."""
