"""Compare every registered strategy on IID and on pathological non-IID data.

What it runs and writes: ``--help``, the docstring of fl_app/studies/compare.py.
"""

import sys

from fl_app.studies.compare import main

if __name__ == "__main__":
    sys.exit(main())
