//! `make bench-cutover`: one blue-green rollout of inventory on kind's node
//! while `CreateOrder` runs at a constant rate (default 500/s), printing failed
//! calls, p50/p99 before, during and after the switch, and the time until all
//! traffic is on green. Numbers from one run; it asserts nothing.
//!
//! Runs inside the kind node's network namespace (the Makefile enters it with
//! `tests/e2e/kind/kind.sh netns`).

use std::time::Duration;

use ferry_e2e::{
    in_namespace,
    shop::{self, Ending, ShopOptions},
};

#[tokio::main]
async fn main() {
    shop::require_real_pods();
    let rate: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("rate: a number of calls per second"))
        .unwrap_or(500);
    in_namespace("bench-cutover", |ctx| async move {
        shop::wait_for_a_quiet_node(&ctx).await;
        let _release = shop::deploy(&ctx, &ShopOptions::default(), 10_000_000).await;
        let report = shop::rollout_under_load(
            &ctx,
            rate,
            Duration::from_secs(10),
            Duration::from_secs(10),
            Ending::Promote,
        )
        .await;
        let load = &report.load;
        println!("Blue-green cutover of inventory under {rate} CreateOrder/s (one run)\n");
        println!("{}", report.table());
        println!("| total | value |\n|---|---:|");
        println!("| calls sent | {} |", load.sent);
        println!("| acknowledged | {} |", load.acknowledged.len());
        println!("| failed | {} |", load.failures.len());
        println!("| offered per second | {:.0} |", load.offered_rate());
        println!("| answered per second (until the last answer) | {:.0} |", load.rate());
        println!("| ticks skipped (over 4096 in flight) | {} |", load.skipped);
        match (report.switched_at, report.seconds_until_all_on_green()) {
            (Some(at), Some(green)) => {
                println!("| patch → selector switch | {:.1} s |", (at - report.patched_at).as_secs_f64());
                println!("| selector switch → all traffic on green | {green:.1} s |");
            }
            _ => println!("| selector switch | not seen |"),
        }
        println!("| deductions served by green | {} |", report.green_calls);
        for failure in load.failures.iter().take(5) {
            println!("failure at {:.2} s: {:?} {}", failure.at.as_secs_f64(), failure.code, failure.message);
        }
    })
    .await;
}
