r"""How FedAvg and the robust rules fare when 20% of the clients attack.

    .venv/bin/python scripts/attack_study.py

runs fedavg, krum, multi-krum, median, trimmed-mean and centered-clipping with 100
virtual clients, C = 0.1, IID Fashion-MNIST (``/usr/share/datasets/fashion-mnist``)
and 30 rounds, first clean, then with 20% of the clients (``attack.fraction=0.2``,
drawn from the seed) sending ``-factor * update`` (``sign-flip``), then sending
``factor * update`` (``scale``); ``factor`` is ``attack.factor`` (``--factor``,
default the config's 10). 18 runs on one SuperLink. It writes to
``outputs/attacks/``:

* ``attacks.md``: per strategy the clean accuracy, the accuracy under each attack,
  the drop in points against that strategy's clean run, whether it stayed within 2
  points of clean (``--tolerance``), and the attackers sampled per round;
* ``attacks.png``: test accuracy against round, one panel per condition;
* ``attacks.json``: the raw numbers;
* ``runs/<strategy>-<condition>/``: each finished run (history, config, logs).

Running the same command again skips the runs already finished, so an interrupted
study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/attack_study.py --rounds 2 \
        --strategies fedavg,median --num-supernodes 20 --out outputs/attacks-smoke
"""

import sys

from fl_app.studies.attacks import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
