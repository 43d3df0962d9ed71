r"""What SecAgg+ costs against the plain path, in seconds and bytes per round.

    .venv/bin/python scripts/secagg_cost.py          # 2 runs, about 3 min

Runs workload W (Fashion-MNIST, the 2NN, 100 clients IID, C = 0.1, E = 1, B = 10,
10 rounds) twice on one SuperLink, plain and with ``secagg.enabled`` (default
knobs; ``validation.max-update-norm=0``, which SecAgg+ requires), and prints:

* seconds per steady round (median of rounds 2..R) and round 1, from the history;
* upload bytes per client and round: the plain path's is measured from the replies
  (``bytes_received``); SecAgg+'s masked vector travels in the protocol's own
  records, so it is computed by running Flower's own quantize-and-mask functions
  on the model's shapes and serializing the result (the key exchange adds a few
  hundred bytes per client and stage, not counted);
* final accuracy, which must agree within the quantization error.

Results go to ``outputs/secagg-cost/`` (``secagg-cost.md``, ``secagg-cost.json``);
finished runs are reused on a second invocation.
"""

import sys

from fl_app.studies.secagg_cost import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
