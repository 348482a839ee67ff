"""Server control commands: start, stop, reload and status."""
