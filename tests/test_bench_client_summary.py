"""The benchmark client's arithmetic (the HTTP flow is tested against the real server in the API tests)."""

from __future__ import annotations

from wanserve.ops.bench_client import RequestRecord, percentile, summarize


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_summary_counts_outcomes_and_averages_server_stages():
    records = [
        RequestRecord(0, "a", "completed", 200, latency_seconds=10.0, queue_seconds=1.0,
                      server_timings={"denoise": 8.0, "decode": 1.0}),
        RequestRecord(1, "b", "completed", 200, latency_seconds=20.0, queue_seconds=3.0,
                      server_timings={"denoise": 10.0, "decode": 3.0}),
        RequestRecord(2, None, "rejected", 429, error="queue full"),
    ]
    s = summarize(records, wall_seconds=30.0)
    assert s["completed"] == 2 and s["requests"] == 3
    assert abs(s["success_rate"] - 2 / 3) < 1e-9
    assert s["outcomes"] == {"completed": 2, "rejected": 1}
    assert s["latency_p50_s"] == 10.0 and s["latency_max_s"] == 20.0
    assert s["throughput_per_min"] == 4.0
    assert s["server_stage_mean_s"] == {"denoise": 9.0, "decode": 2.0}
