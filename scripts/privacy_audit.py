"""What a curious server and a model's users learn, under each defence the app has.

What it runs and writes: ``--help``, the docstring of
fl_app/studies/privacy_audit.py.
"""

import sys

from fl_app.studies.privacy_audit import main

if __name__ == "__main__":
    sys.exit(main())
