"""How FedAvg and the robust rules fare when 20% of the clients attack.

What it runs and writes: ``--help``, the docstring of fl_app/studies/attacks.py.
"""

import sys

from fl_app.studies.attacks import main

if __name__ == "__main__":
    sys.exit(main())
