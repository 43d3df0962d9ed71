"""Process control: Flower's SuperLink, SuperNodes and CLI, and a local federation.

Tooling for scripts and tests, never imported by the app itself:

* ``processes``: ports, child processes stopped with all they started, signals;
* ``flower_cli``: a private ``FLWR_HOME``, starting a SuperLink, ``flwr run``/``list``;
* ``runs``: one run's config from the command line, and how it ended (``RunOutcome``);
* ``simulation``: ``SimulationSuperLink``, the way scripts and studies run the app;
* ``certs`` and ``federation``: the TLS files, and a real deployment on loopback.
"""
