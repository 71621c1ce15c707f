"""The import rules of the house (pyproject's ``[tool.importlinter]`` contracts) hold: core
imports nothing of ours, storage at most core, only ``roomserver.api`` is imported from
outside the roomserver (the composition root aside), services never import federation, the
client API never storage or federation, and only the composition root imports the two APIs.
``make lint`` checks the same; this puts it in every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
