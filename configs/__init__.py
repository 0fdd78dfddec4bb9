"""The presets, installed as the package data ``tinylm.configs`` (see pyproject.toml)."""
