"""The CPU benchmark script runs end to end on the tiny model and reports every configuration and phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "cpu_step.py"


def test_tiny_benchmark_reports_every_config_and_phase():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--steps", "1", "--resolution", "256", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

    assert set(report["configs"]) == {"ours", "explicit-everywhere", "research-defaults"}
    assert report["phases"] == [1, 2]
    for config in ("ours", "explicit-everywhere", "research-defaults"):
        for phase in ("phase1", "phase2"):
            result = report["results"][config][phase]
            assert result["ok"], result
            assert result["median_s_per_step"] > 0
            assert result["peak_rss_gb"] > 0
            assert len(result["step_s"]) == 1
            assert result["losses_finite"]
    # the baseline really keeps every small map (self and cross) with its graph, like the research code
    assert report["results"]["explicit-everywhere"]["phase1"]["research_maps_kept"] > 0
    for phase in ("phase1", "phase2"):
        for baseline in ("explicit-everywhere", "research-defaults"):
            ratios = report["ratios"][phase][baseline]
            assert ratios["median_s_per_step"] > 0
            assert ratios["peak_rss_gb"] > 0
