//! The report as the table `switchboard bench` prints.

use std::fmt::Write as _;

use super::BenchReport;

/// The table for people.
pub fn table(r: &BenchReport) -> String {
    let mut table = format!(
        "store                    {}\n\
         messages × concurrency   {} × {}{}\n\
         accepted/s               {:.0}\n\
         delivered/s              {:.0}  ({:.0} % of the ceiling)\n\
         ingest latency p50/p99   {:.2} / {:.2} ms\n\
         ingest→delivery p50/p95/p99  {:.1} / {:.1} / {:.1} ms\n\
         server peak RSS          {:.1} MiB\n\
         server CPU               {:.2} s\n\
         ceiling (HTTP alone)/s   {:.0}\n\
         relay (HTTP in, out)/s   {:.0}  ({:.0} % of the ceiling), CPU {:.2} s\n\
         relay, signing/s         {:.0}  ({:.0} % of the ceiling), CPU {:.2} s\n\
         repeated deliveries      {}",
        r.store,
        r.messages,
        r.concurrency,
        r.rate
            .map(|rate| format!(", offered at {rate:.0}/s"))
            .unwrap_or_default(),
        r.accepted_per_sec,
        r.delivered_per_sec,
        r.delivered_share_of_ceiling * 100.0,
        r.ingest_p50_ms,
        r.ingest_p99_ms,
        r.end_to_end_p50_ms,
        r.end_to_end_p95_ms,
        r.end_to_end_p99_ms,
        r.server_peak_rss_mb,
        r.server_cpu_seconds,
        r.ceiling_per_sec,
        r.relay_per_sec,
        r.relay_share_of_ceiling * 100.0,
        r.relay_cpu_seconds,
        r.signing_relay_per_sec,
        r.signing_relay_share_of_ceiling * 100.0,
        r.signing_relay_cpu_seconds,
        r.repeated_deliveries,
    );
    for w in &r.slow_windows {
        let _ = write!(
            table,
            "\nslow, posted at {:.2} s     {} of {}, the slowest {:.1} ms",
            w.at_s, w.slow, w.posted, w.max_ms
        );
    }
    table
}
