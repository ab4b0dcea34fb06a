"""The load script, briefly: simulated users on a real gunicorn server while the indexer writes, with no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "load_test.py"
PAGES = ("gallery", "similarity", "clustering", "embeddings", "patches")


def test_the_load_script_drives_every_page_while_the_indexer_writes(tmp_path):
    figures = tmp_path / "load.json"
    # Counts, not rates: two users open every page twice while the indexer's first run writes.
    run = subprocess.run([sys.executable, str(SCRIPT), "--users", "2", "--visits", str(2 * len(PAGES)), "--think", "0",
                          "--workers", "2", "--synthetic", "300", "--photos", "8", "--json", str(figures)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(figures.read_text())
    assert result["errors"] == []
    assert not result["indexer_failed"] and result["indexer_runs"] >= 1
    kinds = set(result["latencies_ms"])
    for page in PAGES:
        assert result["latencies_ms"][f"{page}: open"]["count"] >= 2
    assert {"gallery: page", "similarity: top-k", "clustering: clusters", "thumbnail", "shell: changed?"} <= kinds
    assert "2 users for 10 pages each" in run.stdout and "requests/s; 0 errors" in run.stdout
