"""What the parts' commands share for their ``--json`` output."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (the user's ``--json`` file), when one was given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
