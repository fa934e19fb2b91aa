"""``netagg``: the command line, and the only part of :mod:`netagg` that drives the role packages
(``switch``, ``host_agent``, the controller, ``mininet_topos``).

- :mod:`netagg.cli.main`: ``main(argv)`` and the parser (the ``netagg`` script);
- one module per subcommand: :mod:`~netagg.cli.switch`, :mod:`~netagg.cli.bmv2`,
  :mod:`~netagg.cli.controller`, :mod:`~netagg.cli.ctl`, :mod:`~netagg.cli.allreduce`,
  :mod:`~netagg.cli.relay`, :mod:`~netagg.cli.experiment`, :mod:`~netagg.cli.demo` (``make demo``),
  :mod:`~netagg.cli.demo_allreduce`;
- :mod:`netagg.cli.launch`: those commands as child processes (switch, controller) that report when
  they serve, and worker processes (for the demos, the benchmarks and the tests).

A serving command (``switch``, ``bmv2``, ``controller``, ``relay``) prints a banner for people on
stderr and one JSON line for programs on stdout (or into ``--ready-file``) once it serves::

    {"event": "ready", "role": "switch", "data": "127.0.0.1:47000", "agent": null, "pid": 1234}
"""

from netagg.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
