"""QKD: the simulated decoy-state BB84 link, key distillation, and the key store.

The simulator is a simulation: it models the physics of a real link (see
docs/qkd.md) so that the key pool a session draws on is produced the way a real
device produces it.  A real QKD device plugs in through the key store or the
ETSI GS QKD 014 interface instead.
"""
