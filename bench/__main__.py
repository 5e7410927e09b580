import sys

if sys.argv[1:2] == ["soak"]:  # `python -m bench soak ...`: the soak run (bench/soak.py), not the benchmark
    from bench.soak import main as soak

    raise SystemExit(soak(sys.argv[2:]))

from bench.cli import main

raise SystemExit(main())
