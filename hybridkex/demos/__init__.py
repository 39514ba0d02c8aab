"""Demonstrations built on the library, kept outside its core.

* :mod:`~hybridkex.demos.rndl` - record now, decrypt later: three recorded HKX/1
  sessions attacked by a simulated future adversary (``hybridkex rndl-demo``,
  docs/rndl.md).

Nothing here is imported by the library; the command line imports a demo when its
command runs.  Importing this package loads nothing else.
"""
