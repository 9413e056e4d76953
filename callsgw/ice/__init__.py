"""ICE for the gateway: :mod:`callsgw.ice.lite` (RFC 8445 lite agent, RFC 7675 consent)."""

from callsgw.ice.lite import (
    AddressRemoved,
    AddressValidated,
    ConsentExpired,
    IceEvent,
    IceLiteAgent,
    IceState,
    SelectedAddressChanged,
)

__all__ = [
    "AddressRemoved",
    "AddressValidated",
    "ConsentExpired",
    "IceEvent",
    "IceLiteAgent",
    "IceState",
    "SelectedAddressChanged",
]
