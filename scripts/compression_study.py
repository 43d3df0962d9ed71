r"""Compressed client updates: upload bytes against accuracy, IID and non-IID.

    .venv/bin/python scripts/compression_study.py

runs every update codec of ``fl_app/compression.py`` (``compression.scheme``:
``none``, ``fp16``, ``int8``, ``topk`` with ``compression.topk-fraction`` 0.01,
``sign``; error feedback on for topk and sign, as the app does by default) for 50
rounds with the 2NN, 100 virtual clients, C = 0.1, E = 1, B = 10, client lr 0.1,
``fedavg``, on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), once with
``partitioner='iid'`` and once with ``partitioner='dirichlet'``
(``dirichlet-alpha=0.5``): 10 runs on one SuperLink. It writes to
``outputs/compression/``:

* ``compression.md``: per scheme and partition, the upload bytes per round (the
  mean over rounds 1..R of ``bytes_received``, the serialized replies), how many
  times fewer than ``none``, the final test accuracy and its change against
  ``none`` in points; then whether the goals were met: >= 4x fewer upload bytes
  than ``none`` with <= 1 point of final accuracy lost (which schemes), and >= 20x
  with <= 2 points for the best scheme, on each partition;
* ``compression.png``: test accuracy against the cumulative uploaded bytes (MB,
  log scale), one curve per scheme, IID and Dirichlet side by side;
* ``compression.json``: the raw numbers (every round of every run), the goals and
  provenance;
* ``runs/<scheme>-<partitioner>/``: each finished run (history, config, logs),
  e.g. ``runs/none-iid/``, ``runs/topk-0.01-dirichlet/``.

``--topk-fractions 0.01,0.1`` runs topk once per fraction (``topk-0.01``,
``topk-0.1``); ``--schemes`` and ``--partitioners`` choose a subset (``none``, the
baseline, is always needed). Running the same command again skips the runs already
finished, so an interrupted study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/compression_study.py --rounds 2 --schemes none,topk \
        --partitioners iid --num-supernodes 20 --out outputs/compression-smoke
"""

import sys

from fl_app.studies.compression import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
