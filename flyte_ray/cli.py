"""The ``flyte-ray`` command: ``demo``, ``doctor``, ``runs``, ``show``, ``report`` and ``watch-preemption``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flyte-ray", description="Flyte's task model on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser(
        "demo", help="checkpointed training on spot, preempted mid-run, on a local multi-node cluster"
    )
    demo_parser.add_argument(
        "--notice", action="store_true", help="show a preemption notice: save now, move at once, redo nothing"
    )
    sub.add_parser(
        "doctor", help="what a cluster offers (markets, queues, GPUs) and which tasks cannot be placed", add_help=False
    )
    sub.add_parser(
        "watch-preemption",
        help="on a spot node: drain it (reason PREEMPTION) when the cloud announces its preemption",
        add_help=False,
    )
    if argv[:1] == ["doctor"]:
        from . import doctor

        return doctor.main(argv[1:])
    sub.add_parser("runs", help="recent runs recorded in storage", add_help=False)
    sub.add_parser("show", help="a run's calls and attempts as a tree (from storage)", add_help=False)
    if argv[:1] == ["runs"]:
        from .report.commands import runs_main

        return runs_main(argv[1:])
    if argv[:1] == ["show"]:
        from .report.commands import show_main

        return show_main(argv[1:])
    sub.add_parser("report", help="a run's cost, savings and lost work; --html draws its timeline", add_help=False)
    if argv[:1] == ["report"]:
        from .report.commands import report_main

        return report_main(argv[1:])
    if argv[:1] == ["watch-preemption"]:
        from .preemption.watcher import main as watch

        return watch(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo

        return demo.main(notice=args.notice)
    return 2


if __name__ == "__main__":
    sys.exit(main())
