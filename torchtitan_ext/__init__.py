"""Thin adapters onto torchtitan's components: every torchtitan import of the trainer goes
through one module here, each naming the torchtitan version it was checked on
(`TORCHTITAN_CHECKED`); tests/test_torchtitan_ext.py fails when the installed version differs."""

TORCHTITAN_CHECKED = "0.2.2"
"""The torchtitan release these adapters were checked on (pyproject.toml pins it)."""
