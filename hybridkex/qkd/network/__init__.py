"""The two ends of a QKD link between two hosts: Alice's (``qkd link --connect``) and
Bob's (``qkd link --listen``), each in its own process with its own site.

- :mod:`.endpoint`: the ends themselves: connections, rounds, reports, stopping;
- :mod:`.lanes`: several rounds in flight over one classical connection;
- :mod:`.control`: the link's own classical messages;
- :mod:`.deposit` and :mod:`.journal`: the two-phase deposit, so a key is usable at both
  ends or at neither, whichever end dies when;
- :mod:`.channel`: the authenticated channel as the ends use it.

The optics between them are :mod:`hybridkex.qkd.optics` (a simulation); the
distillation is :mod:`hybridkex.qkd.distillation`, unchanged.
"""
