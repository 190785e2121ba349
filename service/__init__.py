"""The phasetune service: the FastAPI app, the launcher that hands studies to Ray, the CLI."""
