"""The benchmark harness keeps working: bench/run.py --quick on the benchmarks that need nothing beyond the
test extra (no APScheduler, no wrk). Its figures are not checked here -- speed is the benchmarks' business,
never the test suite's -- only that it runs, measures and writes its table."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "results.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "idle_tick",
                           "mutations", "--out", str(out)], capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = out.read_text()
    assert "| idle_tick |" in table and "| mutations |" in table
    assert "n/a" not in table.split("## Notes")[0], table
