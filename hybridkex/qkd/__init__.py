"""QKD: the link alone, simulated decoy-state BB84 and the distillation that follows it.

- the physics: :mod:`.parameters`, :mod:`.simulator`, :mod:`.decoy` (the bounds),
  :mod:`.analytic` (the GLLP model), :mod:`.montecarlo` (rates from simulated pulses);
- :mod:`.distillation`: the two-party protocol that turns both ends' records into
  identical keys over an authenticated classical channel;
- the link itself: :mod:`.link` (one simulated link, round by round, and which site
  may take which distilled unit), :mod:`.ends` (Alice and Bob), :mod:`.errors`;
- the link between two hosts: :mod:`.optics` (the emulated source, fibre and detector,
  over TCP) and :mod:`.network` (the two ends: connections, lanes, the two-phase
  deposit and its journal).

The simulator is a simulation: it models the physics of a real link (see
docs/qkd.md) so that the key pool a session draws on is produced the way a real
device produces it.  Distilled keys go to key delivery (:mod:`hybridkex.keydelivery`),
where a real QKD device plugs in instead, through a key store or ETSI GS QKD 014.
"""
