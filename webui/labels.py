"""What a person reads for an id the gateway stores: activities, transports (issue 15: zh-CN showed
``natural_gas``). One table, used by the forms' choices and by the ``activity``/``transport`` filters: the config rules'
choices (``gateway.rules``; the activities' names come from ``local_store.units``) in English and Chinese."""

from __future__ import annotations

from gateway.runtime import BUS, METER
from webui.fields import words

ACTIVITY_LABELS = {c.value: words(c.label, c.label_zh) for c in METER["activity"].choices}
TRANSPORT_LABELS = {c.value: words(c.label, c.label_zh) for c in BUS["transport"].choices}


#: the config file's tables, as the import preview names them
PART_LABELS = {"buses": words("Buses", "总线"), "meters": words("Meters", "仪表"),
               "emissions": words("Emission settings", "排放设置"), "site": words("Site", "站点"),
               "sync": words("Cloud (sync)", "云端同步"), "web": words("Web UI", "网页界面"),
               "backup": words("Backups", "备份")}


def part_label(table: str) -> str:
    return str(PART_LABELS.get(table, table))


def activity_label(activity: str | None) -> str:
    """The activity's name in the user's language; an id without a label (a custom one) as it is."""
    return str(ACTIVITY_LABELS.get(activity or "none", activity))


def transport_label(transport: str) -> str:
    return str(TRANSPORT_LABELS.get(transport, transport))
