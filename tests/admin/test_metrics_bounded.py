"""/metrics against a gateway whose records table is large: the scrape does not load the records.

Issue #20 item 2: every scrape loaded up to 10,000 stored records to count them, and the
gateway's RSS kept the peak, growing with the table (+14.9 MB over the soak's hour). Now the
database counts them; this test fails on the old way (3,000 rows fetched per scrape) and checks
the numbers are the stored records' plus the live sessions'.
"""

from __future__ import annotations

import asyncio

from callsgw.security.totals import tally
from callsgw.server.metrics import LATENCY_BUCKETS
from tests.admin.test_admin_api import get, metric_value, two_party_call
from tests.security.test_record_totals import _records
from tests.signaling.gateway import running_gateway


async def test_metrics_scrape_fetches_a_bounded_number_of_rows(tmp_path):
    async with running_gateway(tmp_path) as app:
        key = app.datadir.admin_key(announce=False)
        a, b, _ = await two_party_call(app, call="big")
        stored = _records(3000, seed=11)
        await asyncio.to_thread(app.store.upsert_many, stored)
        want = tally([r.as_dict() for r in stored], LATENCY_BUCKETS)

        fetched = []
        execute = app.store._execute

        def counting(sql, params=()):
            rows = execute(sql, params)
            fetched.append(len(rows))
            return rows

        app.store._execute = counting
        try:
            status, _, body = await get(app.port, "/metrics", key)
        finally:
            app.store._execute = execute
        text = body.decode()
        assert status == 200
        assert 0 < sum(fetched) <= 60, f"{sum(fetched)} rows fetched for one scrape of 3,002 records"
        # the two live sessions (completed handshakes) and the 3,000 stored records
        assert metric_value(text, 'callsgw_handshakes_total{outcome="completed"}') == want.completed + 2
        assert metric_value(text, 'callsgw_handshakes_total{outcome="failed"}') == want.failed
        assert metric_value(text, "callsgw_handshake_duration_seconds_count") == want.latency_count + 2
        assert metric_value(text, "callsgw_srtp_replays_total") == want.counters["srtp_replays"]
        assert metric_value(text, 'callsgw_bytes_total{direction="out"}') >= want.counters["bytes_out"]
        await a.close()
        await b.close()
