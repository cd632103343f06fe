//! The external services some tests need (PostgreSQL, Redis) and what a test does when one is
//! missing: in CI (`CI` set, as `.ci/run` is run) it fails, because a missing service there is
//! a broken setup and a test that returns early would pass without testing anything; elsewhere
//! it prints what it skipped and why, and returns.

#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

/// Whether this is a CI run: `CI` is set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// `service` is unavailable (`why`), so the running test cannot do its work: panics in CI,
/// prints a `SKIPPED` line naming the test otherwise. The caller then returns.
#[track_caller]
pub fn unavailable(service: &str, why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if in_ci() {
        panic!(
            "{test}: {service} is required when CI is set, but {why}; \
             start it with scripts/services.sh, or unset CI to skip this test locally"
        );
    }
    eprintln!("SKIPPED {test}: {service} unavailable: {why}");
}

/// Whether Redis answers `PING` at `url`; [`unavailable`] when it does not.
#[track_caller]
pub fn redis_up(url: &str) -> bool {
    let answer = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    match answer {
        Ok(_) => true,
        Err(e) => {
            unavailable("Redis", &format!("{url} does not answer PING: {e}"));
            false
        }
    }
}
