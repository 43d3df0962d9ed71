"""Time the app against a single-process loop doing the same SGD steps.

What it measures, and how: ``--help``, the docstring of fl_app/studies/benchmark.py.
"""

import sys

from fl_app.studies.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
