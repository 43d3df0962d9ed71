"""What the simulation does when a Ray worker node dies mid-run.

What it runs and writes: ``--help``, the docstring of fl_app/studies/ray_node_kill.py.
"""

import sys

from fl_app.studies.ray_node_kill import main

if __name__ == "__main__":
    sys.exit(main())
