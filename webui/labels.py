"""What a person reads for an id the gateway stores: activities, transports (issue 15: zh-CN showed
``natural_gas``). One table, used by the forms' choices and by the ``activity``/``transport`` filters."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

ACTIVITY_LABELS = {
    "electricity": _l("purchased electricity"), "electricity_export": _l("exported electricity"),
    "natural_gas": _l("natural gas"), "raw_coal": _l("raw coal"), "diesel": _l("diesel"), "gasoline": _l("gasoline"),
    "lpg": _l("LPG"), "fuel_oil": _l("fuel oil"), "heat": _l("purchased heat"), "heat_export": _l("exported heat"),
    "steam": _l("purchased steam"), "none": _l("none (not counted)"),
}
TRANSPORT_LABELS = {"tcp": _l("Modbus TCP"), "rtu": _l("Modbus RTU (serial)"),
                    "rtu_over_tcp": _l("RTU over TCP (serial device server)")}


def activity_label(activity: str | None) -> str:
    """The activity's name in the user's language; an id without a label (a custom one) as it is."""
    return str(ACTIVITY_LABELS.get(activity or "none", activity))


def transport_label(transport: str) -> str:
    return str(TRANSPORT_LABELS.get(transport, transport))
