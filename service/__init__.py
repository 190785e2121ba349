"""The phasetune service: FastAPI app, persistence of submissions, CLI."""
