"""Reading, validating and writing results/<scale>/<slug>.json (schema: results.schema.json)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from . import paths

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError (with the failing path) if `doc` breaks the schema."""
    import jsonschema
    jsonschema.validate(doc, schema())


def write(doc: dict) -> Path:
    validate(doc)
    path = paths.results_file(doc["scale"], doc["chapter"]["slug"])
    paths.atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n")
    return path


def load(scale: str, slug: str) -> dict | None:
    path = paths.results_file(scale, slug)
    if not path.exists():
        return None
    return json.loads(path.read_text())
