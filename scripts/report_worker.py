"""Run the example external worker of `generate_report` (see backend/devtools/report_worker.py).

    python scripts/report_worker.py --secret "$COPILOT_WEBHOOK_SECRET" --redis redis://127.0.0.1:6379/0

It signs its results with webhook v2 (docs/api.md) and stops cleanly on Ctrl-C or SIGTERM.
"""

from backend.devtools.report_worker import main

if __name__ == "__main__":
    raise SystemExit(main())
