"""The three devices joined in one process, without sockets: for the tests that compare
the emulation with :mod:`hybridkex.qkd.simulator`, and for the bench.

The objects and the order of their steps are those the networked devices use
(:mod:`.devices`); only the TCP connections between them are left out.
"""

from __future__ import annotations

import numpy as np

from hybridkex.qkd.optics.detector import BobTrain, Detector
from hybridkex.qkd.optics.devices import BLOCK_SLOTS
from hybridkex.qkd.optics.fibre import Fibre, FibreStats
from hybridkex.qkd.optics.source import AliceTrain, BitSource, PulseSource
from hybridkex.qkd.parameters import LinkParameters
from hybridkex.qkd.simulator import os_random_bits

__all__ = ["emulate"]


def emulate(params: LinkParameters, pulses: int, rng: np.random.Generator,
            block_slots: int = BLOCK_SLOTS, *, bits: BitSource = os_random_bits
            ) -> tuple[AliceTrain, BobTrain, FibreStats]:
    """One train of ``pulses`` through source, fibre (with ``params.eve``) and detector;
    Alice's bits from ``bits`` (:class:`~hybridkex.qkd.optics.source.PulseSource`)."""
    detector = Detector(params.eta_bob, params.y0, params.e_detector, params.p_z, rng)
    fibre = Fibre(params.distance_km, params.alpha_db_per_km, detector.eta_bob, params.eve,
                  rng)
    source = PulseSource(params, fibre.upstream_transmittance, rng, bits=bits)
    train = source.new_train()
    record = BobTrain(train.train)
    while train.slots < pulses:
        block = source.block(train, min(block_slots, pulses - train.slots))
        detector.detect(fibre.transmit(block), record)
    return train, record, fibre.stats
