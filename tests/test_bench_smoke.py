"""The benchmark harness keeps working: bench/run.py --quick on the benchmarks that need nothing beyond the
test extra (no APScheduler, no wrk). Its figures are not checked here -- speed is the benchmarks' business,
never the test suite's -- only that it runs, measures and writes its table. The start-up benchmark also checks
that the runs log it generates is in the layout schedserver.format_record writes, and that the starts it measures
replayed what they should (none after a clean stop, the records past the saved state after SIGKILL)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("idle_tick", "cron", "mutations", "runs", "startup", "scale100k")


def test_bench_quick_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "results.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", *BENCHMARKS,
                           "--out", str(out)], capture_output=True, text=True, timeout=400)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = out.read_text()
    for name in BENCHMARKS:
        assert f"| {name} |" in table, table
    assert "after a clean stop" in table and "after SIGKILL" in table, table
    assert "n/a" not in table.split("## Notes")[0], table
    assert "Failed to run" not in table, table
