//! The real `order-service` binary: files it is told to watch are re-read when they change.
//! Loopback only, bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_service_common::{auth::Authenticator, testing::hs256_token};
use jsonwebtoken::Algorithm;
use support::{Inventory, eventually, order, process::OrderProcess, with_deadline};

const SECRET: &[u8] = b"inventory-secret";

fn token(secret: &[u8], scope: &str) -> String {
    hs256_token(secret, "order-service", scope, 600)
}

/// Replaces `path` atomically (write a sibling, then rename), as a Secret update does.
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_inventory_token_file_is_used_without_a_config_file() {
    let auth =
        Authenticator::from_key_bytes(Algorithm::HS256, SECRET, inventory_service::app::scopes()).unwrap();
    let inventory = Inventory::start_tcp_with(inventory_service::app::ServeOptions {
        auth: Some(auth),
        ..inventory_service::app::ServeOptions::local()
    })
    .await;
    inventory.set("a", 100).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token(b"not-the-secret", "inventory:write")).unwrap();
    let inventory_addr = inventory.addr.unwrap().to_string();
    let process = OrderProcess::spawn(
        &[
            "--auth-disabled",
            "--inventory-addr",
            &inventory_addr,
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--inventory-token-file",
            token_file.to_str().unwrap(),
            "--config-poll-seconds",
            "1",
        ],
        &[],
    );
    let client = process.serving().await;
    let refused = client.clone().create_order(order("tok-0", "tok", &[("a", 1)])).await;
    assert!(refused.is_err(), "inventory refuses a token signed with another key: {refused:?}");
    replace_file(&token_file, &token(SECRET, "inventory:write"));
    let mut attempt = 0;
    eventually("an order to go through with the new token", Duration::from_secs(15), || {
        attempt += 1;
        let mut c = client.clone();
        let req = with_deadline(order(&format!("tok-{attempt}"), "tok", &[("a", 1)]), Duration::from_secs(5));
        async move { c.create_order(req).await.is_ok() }
    })
    .await;
}
