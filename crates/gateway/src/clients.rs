//! The client-attribute table of a standalone gateway (`cl-gateway --client-attributes FILE`),
//! followed while the gateway runs: an edited file is put in force for new connections within
//! [`FOLLOW_INTERVAL`], and one that does not parse is refused, keeping the table in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::clients::ClientTable;
use tokio::sync::watch;

/// How often the file is looked at: a stat per second is nothing, and an edit is in force about
/// as soon as a person can try it.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Follows `path` until `shutdown` flips. The file is compared by content, not by its times:
/// two edits of the same size within one tick of the file system's clock are still told apart,
/// and a table is a few kilobytes. Content is taken once it reads the same on two ticks in a
/// row, so a file caught half written (an editor that truncates, then writes) is put in force
/// only if it stays so for a tick; and the first look is taken as a change, so an edit made
/// while the gateway started is not missed.
pub(crate) async fn follow(
    path: PathBuf,
    tables: watch::Sender<Arc<ClientTable>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen: Option<Option<Vec<u8>>> = None;
    let mut settling: Option<Option<Vec<u8>>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let now = std::fs::read(&path).ok();
        if seen.as_ref() == Some(&now) {
            settling = None;
            continue;
        }
        if settling.as_ref() != Some(&now) {
            settling = Some(now);
            continue;
        }
        settling = None;
        let read = match &now {
            None => Err("the file cannot be read".to_string()),
            Some(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| ClientTable::parse(text).map_err(|e| e.to_string())),
        };
        seen = Some(now);
        match read {
            Ok(table) => {
                tracing::info!(path = %path.display(), ranges = table.len(), "client attributes loaded");
                tables.send_replace(Arc::new(table));
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "client attributes not reloaded; keeping the table in force"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CURL: &str = "clients:\n  - {cidr: 127.0.0.0/8, labels: {app: curl}}\n";
    const WGET: &str = "clients:\n  - {cidr: 127.0.0.0/8, labels: {app: wget}}\n";

    fn app(tables: &watch::Receiver<Arc<ClientTable>>) -> Option<String> {
        tables
            .borrow()
            .attributes_of([127, 0, 0, 1].into())
            .get("client.clusterlink.net/labels.app")
            .cloned()
    }

    #[tokio::test(start_paused = true)]
    async fn an_edited_table_is_taken_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.yaml");
        std::fs::write(&path, CURL).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(ClientTable::parse(CURL).unwrap()));
        let (stop, shutdown) = watch::channel(false);
        let follower = tokio::spawn(follow(path.clone(), tx, shutdown));
        // The first look puts the file in force (it may have changed while the gateway started).
        rx.changed().await.unwrap();
        assert_eq!(app(&rx).as_deref(), Some("curl"));
        std::fs::write(&path, WGET).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(app(&rx).as_deref(), Some("wget"));
        // A broken file changes nothing: the table in force stays.
        std::fs::write(&path, "clients: [{cidr: not-an-address}]\n").unwrap();
        tokio::time::sleep(FOLLOW_INTERVAL * 3).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(app(&rx).as_deref(), Some("wget"));
        stop.send(true).unwrap();
        follower.await.unwrap();
    }
}
