"""`python tests/gpu/cli.py ARGS...` runs `rayzero ARGS...` on a GPU machine prepared by scripts/gpu_check.sh.

matplotlib is not among the wheels carried to a bare GPU machine (scripts/gpu_wheels.sh: the carry is
limited), so when it is missing the run's plots are skipped, with a note, instead of the finished run
failing at its report. Everything else is the real CLI."""

import importlib.util
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if importlib.util.find_spec("matplotlib") is None:
    plots = types.ModuleType("pipelines.report.plots")

    def write_plots(run_dir, report=None):  # noqa: ARG001 - the real one's signature
        print("note: plots skipped: matplotlib is not installed on this machine", file=sys.stderr)
        return []

    plots.write_plots = write_plots
    sys.modules["pipelines.report.plots"] = plots

from pipelines.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
