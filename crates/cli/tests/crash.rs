//! An acknowledged write survives `kill -9` at any moment.
//!
//! Each round starts the gateway on the same data directory, checks that every write it ever
//! acknowledged is there with the acknowledged value, then writes (several clients at once, so
//! batches are in flight) until the process is killed at a random moment.

// In a test, a poisoned lock is only a failed test.
#![allow(clippy::disallowed_types)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterlink::client::Client;
use clusterlink::context::Context;
use http::Method;
use support::{Fabric, rand_u64};

/// Enough rounds to land kills at many points of the write path.
const ROUNDS: usize = 12;
/// Concurrent writers per round.
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let f = Fabric::new(&["p1"]);
    // name -> port last acknowledged for it
    let acknowledged: Arc<Mutex<BTreeMap<String, u16>>> = Arc::default();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut gw = f.start("p1");
        let ctx = Context {
            server: gw.url.clone(),
            ..Default::default()
        };

        let mut client = Client::new(&ctx).unwrap();
        let reply = client
            .request(Method::GET, "/apis/clusterlink.net/v1alpha1/exports", None)
            .await
            .unwrap();
        assert!(
            reply.status.is_success(),
            "the store did not reopen cleanly: {:?}",
            reply.body
        );
        let stored: BTreeMap<String, u16> = reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                    o["spec"]["port"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        for (name, port) in acknowledged.lock().unwrap().iter() {
            // A write in flight at the kill may have landed too (the gateway may commit and die
            // before answering), so it may hold a later value than the last acknowledged one.
            let got = stored
                .get(name)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {name} is missing"));
            assert!(
                *got >= *port,
                "round {round}: {name} went back from {port} to {got}"
            );
        }

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let ctx = ctx.clone();
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    let mut client = Client::new(&ctx).unwrap();
                    let mut acks = 0;
                    for i in 0u32.. {
                        // Each writer rewrites a few names with rising ports, and adds new ones.
                        let name = if i % 3 == 0 { format!("w{w}-r{round}-{i}") } else { format!("w{w}-hot") };
                        // Rising within and across rounds, so a value can be checked never to go back.
                        let port = 1 + round as u16 * 4000 + i.min(3999) as u16;
                        let body = format!(
                            "{{\"apiVersion\":\"clusterlink.net/v1alpha1\",\"kind\":\"Export\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"default\"}},\"spec\":{{\"port\":{port}}}}}"
                        );
                        let path = format!("/apis/clusterlink.net/v1alpha1/namespaces/default/exports/{name}");
                        match client.request(Method::PUT, &path, Some(body.into_bytes())).await {
                            Ok(r) if r.status.is_success() => {
                                acknowledged.lock().unwrap().insert(name, port);
                                acks += 1;
                            }
                            Ok(r) => panic!("write refused: {:?}", r.body),
                            Err(_) => return acks, // killed
                        }
                    }
                    acks
                })
            })
            .collect();
        // Kill somewhere between almost at once and a few hundred milliseconds in.
        tokio::time::sleep(Duration::from_millis(5 + rand_u64() % 300)).await;
        gw.kill9();
        for w in writers {
            total_acks += w.await.unwrap();
        }
    }
    eprintln!("{total_acks} writes acknowledged over {ROUNDS} kill -9 rounds");
    assert!(
        total_acks > ROUNDS,
        "too few writes were acknowledged ({total_acks}) to prove anything"
    );
    // One last restart to check the final round too.
    let gw = f.start("p1");
    let listed = gw.gwctl_ok(&["get", "exports", "-o", "json"]);
    for name in acknowledged.lock().unwrap().keys() {
        assert!(
            listed.contains(&format!("\"name\": \"{name}\"")),
            "{name} missing after the last kill"
        );
    }
}
