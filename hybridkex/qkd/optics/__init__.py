"""The emulated optical layer of a QKD link that spans processes and hosts (a simulation).

Three devices, each its own object and, on the command line, its own process or thread:

- :mod:`.source`: Alice's transmitter.  It draws her intensity class, basis and bit per
  pulse and the photon number of each weak coherent pulse, and emits only what light
  would carry: photon numbers and polarisations (:mod:`.wire`).
- :mod:`.fibre`: the fibre between the sites, with its loss and, optionally, an
  eavesdropper (``hybridkex qkd fiber --eve ...``).
- :mod:`.detector`: Bob's receiver: his basis choice, misalignment, detector efficiency
  and dark counts.  Bob's distillation end learns only what his detectors register.

:mod:`.devices` runs them over TCP.  Together they are exact in distribution: the
records both ends hand to distillation have the same law as those of the in-process
simulator (:mod:`hybridkex.qkd.simulator`) for the same parameters
(tests/test_qkd_optics.py compares them).

Why loss may be applied early (the one liberty the emulation takes): every loss on the
way is independent per photon and does not act on the polarisation, so a photon lost at
the fibre's start and one lost in Bob's detector are lost alike (binomial thinning
composes and commutes).  When the quantum connection opens, each element downstream
says which part of the loss behind it the element upstream may apply on its behalf
(:class:`.wire.DeviceHello`): Bob's detector its efficiency, an honest fibre its own
transmittance times that.  The source then emits only pulses that still hold a photon
after that loss, about one per detection instead of one per pulse.  An eavesdropper
sees the light before any loss, so a fibre with Eve asks for none, and the source then
emits every pulse that holds a photon.  This request is an artefact of the emulation,
used for sampling only: the link never reports or acts on it.
"""
