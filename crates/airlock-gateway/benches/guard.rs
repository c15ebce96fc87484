//! What the guard costs per statement, against what libpg_query's entry points cost on the same
//! text: `cargo bench -p airlock-gateway --bench guard`.
//!
//! The text is pgbench's `-S` statement with a new literal each time, as pgbench sends it over the
//! simple protocol, so every check misses the cache unless said otherwise. Each figure is the
//! median of single-call timings (the clock read adds some 20 ns to each).

use std::hint::black_box;
use std::time::Instant;

use airlock_gateway::guard::{Allowed, Guard, redact};

const CALLS: usize = 50_000;

/// The median time of one call, in nanoseconds.
fn p50(mut call: impl FnMut(usize)) -> f64 {
    for i in 0..CALLS / 10 {
        call(i);
    }
    let mut times: Vec<u128> = (0..CALLS)
        .map(|i| {
            let start = Instant::now();
            call(i);
            start.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2] as f64
}

fn main() {
    let select = |aid: usize| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", aid % 100_000 + 1);
    let texts: Vec<String> = (0..CALLS * 3).map(select).collect();
    let settings: Vec<String> = (0..CALLS * 3).map(|i| format!("SET application_name = 'bench {i}'")).collect();
    let allowed = Allowed::none();
    let text = &texts[0];

    let parse = p50(|_| drop(black_box(pg_query::parse(black_box(text), 0))));
    let summary = p50(|_| drop(black_box(pg_query::summary(black_box(text), 0, -1))));
    let scan = p50(|_| drop(black_box(pg_query::scan_tokens(black_box(text)))));
    let utility = p50(|_| drop(black_box(pg_query::is_utility_stmt(black_box(text)))));
    let split = p50(|_| drop(black_box(pg_query::split_with_parser(black_box(text)))));
    let normalize = p50(|_| drop(black_box(redact(black_box(text)))));

    let guard = Guard::new();
    let mut fresh = texts.iter().skip(CALLS / 10);
    let miss = p50(|_| {
        let text = fresh.next().map_or(text.as_str(), String::as_str);
        drop(black_box(guard.check(black_box(text), &allowed)));
    });
    let hit = p50(|_| drop(black_box(guard.check(black_box(text), &allowed))));
    let mut fresh = settings.iter();
    let full = p50(|_| {
        let text = fresh.next().map_or(settings[0].as_str(), String::as_str);
        drop(black_box(guard.check(black_box(text), &allowed)));
    });

    println!("pgbench -S text: {text:?}, p50 of {CALLS} calls each");
    println!("  pg_query::parse (protobuf tree)   {parse:>7.0} ns");
    println!("  pg_query::summary                 {summary:>7.0} ns");
    println!("  pg_query::split_with_parser       {split:>7.0} ns");
    println!("  pg_query::is_utility_stmt         {utility:>7.0} ns");
    println!("  pg_query::scan_tokens             {scan:>7.0} ns");
    println!("  guard::redact (normalize)         {normalize:>7.0} ns");
    println!("  Guard::check, new text (fast path){miss:>7.0} ns  = {:.2} × parse", miss / parse);
    println!("  Guard::check, cached text         {hit:>7.0} ns  = {:.2} × parse", hit / parse);
    println!("  Guard::check, new SET (full check){full:>7.0} ns  = {:.2} × parse", full / parse);
}
