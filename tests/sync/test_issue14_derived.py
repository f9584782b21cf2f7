"""Issue 14 part 8: derived data (emissions with factor rows, intervals, activity data, instruments) reaches
the receiver in signed, exactly-once batches of kind ``derived``, and the receiver recomputes the report."""

from __future__ import annotations

import shutil
from datetime import date, timedelta, timezone
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import EmissionSettings, SourceSettings, open_store
from local_store.importer import import_csv
from local_store.reports import build_report
from sync import Receiver, ReceiverSettings, SyncService, SyncSettings, outbox
from sync.crypto import parse_header
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from sync.receiver import connect, recomputed_tco2e

CST = timezone(timedelta(hours=8))
MARCH_START = 1_677_600_000.0          # 2023-03-01 00:00 CST (2023-02-28 16:00 UTC)
MARCH_END = 1_680_278_400.0            # 2023-04-01 00:00 CST


def test_the_receiver_recomputes_the_gateways_monthly_report(tmp_path: Path) -> None:
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    store = open_store(tmp_path / "gateway.db", EmissionSettings(timezone="Asia/Shanghai"))
    try:
        store.configure_sources([SourceSettings("main", "electricity")])
        # A meter read hourly through March 2023: +10 kWh per hour, 744 hours = 7440 kWh.
        store.insert_readings([Reading("main", "energy_import", MARCH_START + 3600 * k, 1000.0 + 10 * k, "kWh",
                                       Quantity.ENERGY_IMPORT) for k in range(745)])
        store.process()
        bill = tmp_path / "gas.csv"
        bill.write_text("source,activity,start,end,amount,unit\nboiler,natural_gas,2023-03-01,2023-04-01,10000,m3\n",
                        encoding="utf-8")
        import_csv(store, bill)
        certs = tmp_path / "certs.csv"
        certs.write_text("instrument,kind,start,end,amount,unit,emission_factor\n"
                         "GEC-1,certificate,2023-03-01,2023-04-01,2,MWh,0\n", encoding="utf-8")
        import_csv(store, certs)
        gateway = build_report(store, date(2023, 3, 1), date(2023, 4, 1), tz=CST)
        # Electricity 7.44 MWh x 0.5306 = 3.947664 t; gas 10000 m3 x 0.038931 GJ/m3 x 0.01532 x 0.99 x 44/12
        # = 21.650155 t; the month 25.597819 t.
        gas = 10_000 * 0.038931 * 0.01532 * 0.99 * 44 / 12
        assert gateway["total_tco2e"] == pytest.approx(7.44 * 0.5306 + gas, abs=1e-5)

        service = SyncService(SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, batch_max_age_s=0.0), store)
        service.fill(force=True)
        kinds = [parse_header(row.message)[0].kind for row in outbox.unacked(store.db, 100)]
        assert kinds.count("derived") == 1 and kinds.count("readings") >= 1
        receiver = Receiver(ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted))
        acks = [receiver.handle(row.message) for row in outbox.unacked(store.db, 100)]
        assert {a[1]["status"] for a in acks if a} == {"committed"}
        # Exactly once: the same batches again are duplicates and change nothing.
        again = [receiver.handle(row.message) for row in outbox.unacked(store.db, 100)]
        assert {a[1]["status"] for a in again if a} == {"duplicate"}
        conn = connect(tmp_path / "receiver.db")
        recomputed = recomputed_tco2e(conn, "gw-1", MARCH_START, MARCH_END)
        assert recomputed == pytest.approx(gateway["total_tco2e"], abs=1e-6)
        refs = {r[0] for r in conn.query("SELECT ref FROM derived_factors WHERE gateway_id = 'gw-1'")}
        assert refs == {f["ref"] for f in gateway["factors"]}
        assert conn.query("SELECT reference, mwh FROM derived_instruments") == [("GEC-1", 2.0)]
        assert conn.query("SELECT COUNT(*) FROM derived_intervals")[0][0] == 744 * 4
        assert conn.query("SELECT source_id, amount_original FROM derived_activity")[0] == ("boiler", 10000.0)

        # A later change (a recalculation after a factor change) goes as a new derived batch; the receiver
        # then holds both versions and recomputes with the current one.
        for row in outbox.unacked(store.db, 100):
            outbox.acknowledge(store.db, row.seq, parse_header(row.message)[0].stream)
        store.configure_sources([SourceSettings("main", "electricity")], EmissionSettings(
            timezone="Asia/Shanghai", region="east_china"))
        store.process()
        changed = build_report(store, date(2023, 3, 1), date(2023, 4, 1), tz=CST)
        # East China 2023: 7.44 MWh x 0.5500 = 4.092 t, gas unchanged.
        assert changed["total_tco2e"] == pytest.approx(7.44 * 0.55 + gas, abs=1e-5)
        service.fill(force=True)
        for row in outbox.unacked(store.db, 100):
            receiver.handle(row.message)
        assert recomputed_tco2e(conn, "gw-1", MARCH_START, MARCH_END) == pytest.approx(changed["total_tco2e"], abs=1e-6)
        receiver.stop()
        conn.close()
    finally:
        store.close()
