"""McMahan et al. 2017, Table 2 protocol for the 2NN: FedSGD against FedAvg.

What it runs and writes: ``--help``, the docstring of fl_app/studies/mcmahan.py.
"""

import sys

from fl_app.studies.mcmahan import main

if __name__ == "__main__":
    sys.exit(main())
