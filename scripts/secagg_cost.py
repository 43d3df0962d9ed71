"""What SecAgg+ costs against the plain path, in seconds and bytes per round.

What it runs and writes: ``--help``, the docstring of fl_app/studies/secagg_cost.py.
"""

import sys

from fl_app.studies.secagg_cost import main

if __name__ == "__main__":
    sys.exit(main())
