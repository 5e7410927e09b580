"""Run the example external worker of `generate_report` (see backend/devtools/report_worker.py)."""

from backend.devtools.report_worker import main

if __name__ == "__main__":
    raise SystemExit(main())
