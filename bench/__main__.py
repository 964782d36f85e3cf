"""`python -m bench`: the lead benchmark, then the webhook, fault and observability (cost of metrics
+ logging) benchmarks when their modules exist. `python -m bench faults` (or `leads`, `webhooks`,
`observability`) runs only the suites named; so does MEGA_BENCH_SUITES=a,b."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback


def main() -> int:
    failed = False
    suites = ["bench.leads"]
    for name in ("bench.webhooks", "bench.faults", "bench.observability"):
        if importlib.util.find_spec(name) is not None:
            suites.append(name)
    chosen = sys.argv[1:] or [
        s.strip() for s in os.environ.get("MEGA_BENCH_SUITES", "").split(",") if s.strip()
    ]
    if chosen:
        suites = [f"bench.{name}" for name in chosen]
        sys.argv = sys.argv[:1]  # the suites parse their own arguments
    for name in suites:
        try:
            importlib.import_module(name).main()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - report and go on with the next suite
            if isinstance(exc, SystemExit) and exc.code in (None, 0):
                continue
            traceback.print_exc()
            print(f"\n{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
