"""Start-up cost: the CLI's help and plugin listing import no torch and no transformers."""

import json
import os
import subprocess
import sys

import pytest

CHECK = """
import json, sys
from crossedge.core.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("\\n" + json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"]])
def test_cli_listing_imports_no_torch(args):
    env = {k: v for k, v in os.environ.items() if k not in ("CROSSEDGE_LOAD_PLUGINS", "CROSSEDGE_NO_ENTRY_POINTS")}
    done = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), done.stderr
    assert result["heavy"] == [], f"crossedge {' '.join(args)} imported {result['heavy']}"
    if args == ["plugins", "--json"]:
        names = {row["name"] for row in json.loads(done.stdout.strip().rsplit("\n", 1)[0])}
        assert {"specdec", "quant", "ondevice", "retrieval"} <= names  # the entry points really loaded
