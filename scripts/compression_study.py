"""Compressed client updates: upload bytes against accuracy, IID and non-IID.

What it runs and writes: ``--help``, the docstring of fl_app/studies/compression.py.
"""

import sys

from fl_app.studies.compression import main

if __name__ == "__main__":
    sys.exit(main())
