"""The KME-to-KME sync API, version 1: the reservations a master's KME sends the slave's.

No I/O here: the JSON both ends exchange and the checks the receiving KME makes before
its store sees anything.  The transport (HTTPS, mutual TLS between the KMEs, each
certificate's CN = its KME ID = its site ID, all issued by the shared CA) is in
:mod:`hybridkex.keydelivery.kme.peers` (sending) and the server (receiving).
docs/kme.md documents the API.

``POST /kme-sync/v1/reservations``::

    {"source_KME_ID": "A", "target_KME_ID": "B",
     "reservations": [{"key_ID": "<uuid>", "size": 512,
                       "units": ["<uuid = key_ID>", "<uuid>"],
                       "master_SAE_ID": "sae-a", "slave_SAE_IDs": ["sae-b"]}]}

answered ``200 {"recorded": <n>}`` once every reservation is durably recorded, or an
Error body (ETSI clause 6.5 shape): 400 malformed or forged (an SAE not attached where
the reservation says), 401 the caller is not a configured peer KME or claims another
KME ID, 409 refused by the store (a unit unknown, already bound or delivered, or not
the sender's to take: a replayed reservation lands here), 503 the KME cannot record now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hybridkex.errors import InvalidParameter
from hybridkex.keydelivery.binding import Binding, Reservation, check_disjoint
from hybridkex.keydelivery.errors import KeySourceError
from hybridkex.keydelivery.keys import MAX_KEYS_PER_REQUEST
from hybridkex.keydelivery.kme.formats import BadRequest, KMEError, KMELimits, Unauthorized

__all__ = ["RESERVATIONS_PATH", "SYNC_VERSION", "Conflict", "encode_reservations",
           "parse_reservations"]

SYNC_VERSION = 1
RESERVATIONS_PATH = f"/kme-sync/v{SYNC_VERSION}/reservations"


class Conflict(KMEError):
    """409: the store refused the reservations (nothing of the batch was recorded)."""

    status = 409


def encode_reservations(source: str, target: str,
                        reservations: Sequence[Reservation]) -> dict[str, Any]:
    """The request body for ``reservations`` from KME ``source`` to KME ``target``."""
    return {"source_KME_ID": source, "target_KME_ID": target,
            "reservations": [{"key_ID": r.key_id, "size": r.size_bits, "units": list(r.units),
                              "master_SAE_ID": r.binding.master,
                              "slave_SAE_IDs": list(r.binding.slaves)}
                             for r in reservations]}


def _string(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def parse_reservations(body: Any, *, caller: str, local: str, sae_sites: Mapping[str, str],
                       limits: KMELimits) -> list[Reservation]:
    """Check a reservations request from peer KME ``caller`` (its certificate's CN)
    at KME ``local``: the IDs it claims, every SAE where the reservation puts it (the
    master at the caller's site, every slave at this one), sizes within the limits,
    unit counts that match the sizes, no unit twice."""
    if not isinstance(body, dict):
        raise BadRequest("the sync request must be a JSON object")
    if _string(body, "source_KME_ID") != caller:
        raise Unauthorized("source_KME_ID is not the calling KME's ID")
    if _string(body, "target_KME_ID") != local:
        raise BadRequest("target_KME_ID is not this KME")
    items = body.get("reservations")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise BadRequest("reservations must be a non-empty array of objects")
    out: list[Reservation] = []
    # a batch is usually one binding and one size: each is checked once per batch
    bindings: dict[tuple[str, tuple[str, ...]], Binding] = {}
    sizes: set[int] = set()
    for item in items:
        master = _string(item, "master_SAE_ID")
        slaves = item.get("slave_SAE_IDs")
        if not isinstance(slaves, list) or not slaves or not all(
                isinstance(s, str) and s for s in slaves):
            raise BadRequest("slave_SAE_IDs must be a non-empty array of SAE IDs")
        named = (master, tuple(slaves))
        binding = bindings.get(named)
        if binding is None:
            if len(slaves) > 1 + limits.max_SAE_ID_count:
                raise BadRequest("a reservation names more slave SAEs than this KME allows")
            if sae_sites.get(master) != caller:
                raise BadRequest("a reservation's master SAE is not attached to the calling KME")
            if any(sae_sites.get(s) != local for s in slaves):
                raise BadRequest("a reservation's slave SAE is not attached to this KME")
            try:
                binding = bindings[named] = Binding(*named)
            except InvalidParameter as exc:
                raise BadRequest(f"a reservation is malformed: {exc}") from None
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise BadRequest("size must be an integer")
        if size not in sizes:
            sizes.add(limits.check_size(size))
        units = item.get("units")
        if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
            raise BadRequest("units must be an array of unit IDs")
        try:
            out.append(Reservation(_string(item, "key_ID"), size, tuple(units), binding))
        except (InvalidParameter, KeySourceError) as exc:
            raise BadRequest(f"a reservation is malformed: {exc}") from None
    if sum(len(r.units) for r in out) > MAX_KEYS_PER_REQUEST:
        raise BadRequest(f"one sync request may bind at most {MAX_KEYS_PER_REQUEST} units")
    try:
        check_disjoint(out)
    except InvalidParameter as exc:
        raise BadRequest(str(exc)) from None
    return out
