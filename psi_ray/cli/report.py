"""CLI verb ``report``: write a run's ``report.html`` and ``report.md``, optionally beside other runs.

``psi-ray report runs/gsm8k-cpu-psi --compare runs/gsm8k-cpu-teacher runs/gsm8k-cpu-student``
"""

from __future__ import annotations


def cmd_report(args) -> int:
    """Write RUN_DIR/report.html (one self-contained page) and RUN_DIR/report.md, and print the headline."""
    from psi_ray.report import write_report

    out = write_report(args.run_dir, args.compare or ())
    print(f"report: {out['html']}")
    print(f"summary: {out['markdown']}")
    for line in out["headline"]:
        print(f"  {line}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write a run's HTML report and Markdown summary",
                       description=cmd_report.__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/gsm8k-cpu-psi")
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=[],
                   help="other run folders to compare with (a teacher run gives per-1K ratios)")
    p.set_defaults(func=cmd_report)

