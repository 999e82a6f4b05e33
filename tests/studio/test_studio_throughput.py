"""bench/studio_throughput.py runs the same config headless and in the real main window."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import studio_throughput  # noqa: E402


def test_headless_studio_headless_all_complete_with_a_ratio(qapp, tmp_path) -> None:
    rc = studio_throughput.main(["--steps", "5", "--warmup", "1", "--log-every", "1", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "studio-throughput-cpu.json").read_text())
    assert rc == 0
    assert [r["kind"] for r in res["runs"]] == ["headless", "studio", "headless"]
    assert all(r["status"].startswith("completed") and r["images_per_s"] > 0 for r in res["runs"]), res["runs"]
    assert res["ratio_studio_to_headless"] > 0 and res["target_ratio"] == 0.97
    assert res["target_met"] is False  # never claimed on the CPU: the target is for a GPU
