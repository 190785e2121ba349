"""Alembic's environment for phasetune's own tables (``phasetune.service.db``), shipped in the package and run by
``phasetune.service.db.migrate``: no alembic.ini at run time. Optuna migrates its tables with its own Alembic
environment; ours keeps its revision in ``phasetune_alembic_version`` so the two never meet.

A new revision (schema changes go here, never as hand-written DDL), from the repo root (``[tool.alembic]`` in
pyproject.toml points here)::

    alembic -x url=sqlite:///scratch.db upgrade head
    alembic -x url=sqlite:///scratch.db revision --autogenerate -m "what changed"
"""
