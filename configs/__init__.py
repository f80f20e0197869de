"""gancli's YAML configs, installed as the package gancli.configs (see pyproject.toml)."""
