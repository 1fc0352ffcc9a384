"""Locus without a window: CLI, sessions, agent, localization, API server, models, settings."""

__version__ = "0.1.0"
