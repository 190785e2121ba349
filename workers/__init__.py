"""Training loop, built-in workloads and the Ray Tune runner."""
