"""Stragglers on simulated devices: virtual time to accuracy of uniform selection,
over-commitment, Power-of-Choice, Oort, FedBuff and a deadline with and without
partial work.

What it runs and writes: ``--help``, the docstring of fl_app/studies/heterogeneity.py.
"""

import sys

from fl_app.studies.heterogeneity import main

if __name__ == "__main__":
    sys.exit(main())
