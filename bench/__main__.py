"""`python -m bench`: the lead benchmark, the webhook benchmark when bench/webhooks.py exists, then
the cost of metrics + logging (bench/observability.py). MEGA_BENCH_SUITES=observability (a comma
list of leads, webhooks, observability) runs only those."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback


def main() -> int:
    failed = False
    suites = ["bench.leads"]
    if importlib.util.find_spec("bench.webhooks") is not None:
        suites.append("bench.webhooks")
    suites.append("bench.observability")
    chosen = {s.strip() for s in os.environ.get("MEGA_BENCH_SUITES", "").split(",") if s.strip()}
    if chosen:
        suites = [s for s in suites if s.removeprefix("bench.") in chosen]
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
