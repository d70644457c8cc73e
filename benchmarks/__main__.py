"""``python -m benchmarks [--quick] [--only NAME,...] ...``: run the benchmark suite and
write ``benchmarks/results.md`` and ``benchmarks/results.json``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import RESULTS_DIR, SECTIONS, run_suite
from .harness import Context


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Side-by-side benchmarks of the course's pieces; see benchmarks/README.md.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="small sizes, one round: about a minute; figures are indicative")
    mode.add_argument("--tiny", action="store_const", const="tiny", dest="mode",
                      help="toy sizes: checks that the harness works; figures mean nothing")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per figure (default: 3 in full mode, 1 otherwise)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for every section (default: torch's default, "
                        "one per physical core); on a busy machine 1 is steadier")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--notebooks-full", action="store_true",
                   help="also time every notebook in full mode (long)")
    p.add_argument("--notebooks-dir", type=Path, default=None,
                   help="folder of NN_*.ipynb notebooks to time (default: notebooks/)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="folder for results.md and results.json (default: benchmarks/)")
    p.set_defaults(mode="full")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        print(f"error: unknown section(s) {', '.join(unknown) or '(none given)'}; choose "
              f"from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    import torch

    threads = args.threads or torch.get_num_threads()
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    repeats = args.repeats or (3 if args.mode == "full" else 1)
    ctx = Context(mode=args.mode, repeats=repeats, threads=threads, device=args.device,
                  notebooks_full=args.notebooks_full, notebooks_dir=args.notebooks_dir,
                  log=log)
    log(f"{args.mode} mode, {repeats} round(s), {threads} torch thread(s), sections: "
        f"{', '.join(names)}; COURSE_DATA_DIR={os.environ.get('COURSE_DATA_DIR', '(unset)')}")
    results, md, js = run_suite(ctx, names, args.out)
    failed = [t for r in results for t in r.targets if t.check and t.passed is False]
    for r in results:
        for t in r.targets:
            verdict = {True: "PASS", False: "MISS", None: "n/a"}[t.passed]
            log(f"{verdict:4}  {r.name}: {t.what}: {t.measured}")
    log(f"wrote {md} and {js}")
    if failed:
        log("FAILED checks: " + "; ".join(t.what for t in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
