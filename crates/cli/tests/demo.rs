//! The README's main command: `clusterlink demo` runs real gateways and shows real traffic.

mod support;

#[test]
fn the_demo_shows_an_allowed_and_a_denied_connection_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let o = support::run(support::CLUSTERLINK, &["demo"], dir.path());
    let out = support::stdout(&o);
    assert!(o.status.success(), "{out}{}", support::stderr(&o));
    for expected in [
        "(import reviews) -> ALLOWED, server1 answered: \"hello from the reviews service on server1\"",
        "(import ratings) -> DENIED, the client saw: connection reset",
        "client1 logged why: refused (PolicyDenied): ingress at server1: denied by AccessPolicy default/deny-ratings\n",
        "server1   127.0.0.1:",
        "400 Bad Request: spec.sources[1].peer: required",
        "Done: gateways stopped and the demo directory removed.",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let demo_dir = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("ClusterLink demo in ")
        .trim();
    assert!(
        !std::path::Path::new(demo_dir).exists(),
        "{demo_dir} was left behind"
    );
}
