r"""Compare every registered strategy on IID and on pathological non-IID data.

    .venv/bin/python scripts/compare_strategies.py

runs each strategy of ``strategies.STRATEGIES`` with 100 virtual clients, C = 0.1 and
30 rounds on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), once with
``partitioner='iid'`` and once with ``partitioner='shards'`` (McMahan's 2 label
shards per client): 24 runs on one SuperLink. It writes to ``outputs/compare/``:

* ``compare.md``: per strategy, the final test accuracy and the rounds it took to
  reach a target accuracy (``--target-iid``, ``--target-shards``), IID and shards;
* ``compare.png``: test accuracy against round, IID and shards side by side;
* ``compare.json``: the raw numbers (accuracy of every round of every run);
* ``runs/<strategy>-<partitioner>/``: each finished run (history, config, logs).

Running the same command again skips the runs already finished, so an interrupted
study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/compare_strategies.py --rounds 2 \
        --strategies fedavg,median --num-supernodes 20 --out outputs/compare-smoke
"""

import sys

from fl_app.studies.compare import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
