//! The per-client rate limit on a real server (127.0.0.1:0): a client over its rate gets
//! RESOURCE_EXHAUSTED, another client does not, and health stays open.

use std::{sync::Arc, time::Duration};

use ferry_proto::inventory::v1::{GetStockRequest, inventory_service_client::InventoryServiceClient};
use ferry_service_common::{
    auth::Authenticator,
    testing::{hs256_token, sqlite_url},
};
use inventory_service::{
    app::{self, ServeOptions},
    store::{self, StoreOptions},
};
use jsonwebtoken::Algorithm;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SECRET: &[u8] = b"rate-limit-test-secret";

fn bearer(sub: &str) -> String {
    format!("Bearer {}", hs256_token(SECRET, sub, "inventory:read", 600))
}

async fn get_stock(client: &mut InventoryServiceClient<Channel>, auth: &str) -> Code {
    let mut req = Request::new(GetStockRequest { sku: "no-such-sku".into() });
    req.metadata_mut().insert("authorization", auth.parse().expect("header"));
    match client.get_stock(req).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn a_client_over_its_rate_gets_resource_exhausted_and_others_do_not() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key");
        std::fs::write(&key, SECRET).expect("write key");
        let store = store::open(&StoreOptions::new(sqlite_url(&dir.path().join("inv.db"))))
            .await
            .expect("open the store");
        let auth =
            Authenticator::from_key_file(Algorithm::HS256, &key, app::scopes()).expect("authenticator");
        let running =
            app::start(Arc::clone(&store), ServeOptions { auth: Some(auth), ..ServeOptions::local() })
                .await
                .expect("start inventory");
        // A rate this low cannot refill during the test: the burst of 2 is all alice gets.
        running.plumbing.rate_limit.set(0.001, 2.0);
        let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = InventoryServiceClient::new(channel.clone());
        let (alice, bob) = (bearer("alice"), bearer("bob"));

        assert_eq!(get_stock(&mut client, &alice).await, Code::NotFound);
        assert_eq!(get_stock(&mut client, &alice).await, Code::NotFound);
        assert_eq!(get_stock(&mut client, &alice).await, Code::ResourceExhausted);
        assert_eq!(get_stock(&mut client, &bob).await, Code::NotFound, "bob has his own bucket");
        let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
        assert!(health.is_ok(), "health is never rate limited: {health:?}");

        running.plumbing.rate_limit.set(0.0, 1.0);
        assert_eq!(get_stock(&mut client, &alice).await, Code::NotFound, "rate 0 turns the limit off");

        running.shutdown.cancel();
        running.task.await.expect("join").expect("clean stop");
    })
    .await
    .expect("test finished in time");
}
