//! `leasehold demo` runs the main job end to end and prints its milestones in order.

mod support;

use support::run;

#[test]
fn demo_shows_the_timeline_and_exits_0() {
    let output = run(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let milestones = [
        "echo-1  listening on 127.0.0.1:",
        "client  discovered +echo-1 at 127.0.0.1:",
        "echo-2  listening on 127.0.0.1:",
        "client  discovered +echo-2 at 127.0.0.1:",
        "echo-3  listening on 127.0.0.1:",
        "client  discovered +echo-3 at 127.0.0.1:",
        "client  requests #1-#10 served by echo-1 ×4, echo-2 ×3, echo-3 ×3",
        "echo-2  shutting down gracefully",
        "client  discovered -echo-2: 2 instances",
        "client  echo-2 gone from the set",
        "client  requests #11-#20 served by echo-1 ×5, echo-3 ×5",
        "echo-3  crashed",
        "to echo-3 failed (Connection refused (os error 111)); ejected for a while",
        "client  discovered -echo-3: 1 instance",
        "failed attempt(s) on echo-3 retried on the next instance",
        "client  echo-3 expired from the registry",
        "echo-4  listening on 127.0.0.1:",
        "client  discovered +echo-4 at 127.0.0.1:",
        "served by echo-1 ×5, echo-4 ×5",
        "client  discovered -echo-1: 1 instance",
        "client  discovered -echo-4: 0 instances",
        "demo    done: ",
    ];
    let mut lines = stdout.lines();
    for milestone in milestones {
        assert!(
            lines.any(|line| line.contains(milestone)),
            "milestone {milestone:?} missing or out of order in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("unserved"), "{stdout}");
}
