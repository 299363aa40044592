"""`make bench`: run every benchmarks/bench_*.py and print ratios against peer tools.

Each bench module defines ``rows(n_files, workdir)`` returning a list of dicts with at least
``name`` (what ours did), ``peer`` (the tool it is compared with), ``ours_s``, ``peer_s``,
``ratio`` (ours / peer: below 1.0 is faster), ``target`` (the ratio to stay under, or None),
and ``peak_rss_mb`` (ours). Ours and the peer run in the same process, on the same machine,
on identical trees: only the ratio is meaningful on a shared, noisy machine.

BENCH_FILES sets the tree size (default 200000); BENCH_ONLY=name,name runs some modules.
bench_cache_verify.py also reads BENCH_VERIFY_MB (bytes hashed, default 512) and BENCH_VERIFY_FILES.
Results also go to benchmarks/results.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    n_files = int(os.environ.get("BENCH_FILES", "200000"))
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    sys.path.insert(0, str(HERE))
    results = []
    for path in sorted(HERE.glob("bench_*.py")):
        short = path.stem[len("bench_") :]
        if only and short not in only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        workdir = tempfile.mkdtemp(prefix="bench-%s-" % short, dir=os.environ.get("BENCH_DIR"))
        try:
            print("== %s (%d files)" % (short, n_files), flush=True)
            for row in mod.rows(n_files, workdir):
                row.setdefault("bench", short)
                row["files"] = n_files
                has_target = row.get("target") is not None
                row["met"] = row["ratio"] <= row["target"] if has_target else None
                rss = row.get("peak_rss_mb")
                print(
                    "  %-44s vs %-34s ratio %6.2fx  target %-6s %-6s  peak RSS %s"
                    % (
                        row["name"],
                        row["peer"],
                        row["ratio"],
                        "<=%.2f" % row["target"] if has_target else "-",
                        ("met" if row["met"] else "MISSED") if has_target else "",
                        "%5.1f MB" % rss if rss is not None else "-",
                    ),
                    flush=True,
                )
                results.append(row)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    out = HERE / "results.json"
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print("wrote %s (%d rows)" % (out, len(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
