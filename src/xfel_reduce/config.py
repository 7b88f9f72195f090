"""Workflow configuration: schema validation with messages that name the key."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the key."""


def load_schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    return yaml.safe_load(path.read_text())


def _key_path(err: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in err.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate_config(config: dict, schema: dict | Path | None = None) -> dict:
    """Validate ``config`` against the schema; raise :class:`ConfigError` listing
    every problem as ``key: message``."""
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            msg = e.message
            if e.validator == "additionalProperties":
                msg += " (unknown key: check spelling against config/config.yaml)"
            lines.append(f"  config key {_key_path(e)}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    return config


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    cfg = yaml.safe_load(Path(path).read_text())
    return validate_config(cfg)
