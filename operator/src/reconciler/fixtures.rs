//! The mocked-API-server tier (after kube-rs controller-rs's `fixtures.rs`): a [`Context`] whose
//! client talks to a `tower_test` mock instead of an API server, caches filled from an
//! [`Observed`], and an [`ApiServer`] that answers every request the way the API server would and
//! records it, so a test asserts the exact requests one reconcile sends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use kube::{
    Client, Resource,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    client::Body,
    runtime::{
        events::{Recorder, Reporter},
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use serde_json::{Value, json};

use ferry_operator_core::{
    crd::MicroService,
    desired::{prometheus_rule, scaled_object, service_monitor},
    plan::Observed,
};

use super::{Context, OptionalCrd, OptionalCrds, Stores};
use crate::{
    checks::{CheckRunner, measure::HttpChecks},
    metrics::Metrics,
};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request as the API server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// `GET`, `PATCH`, `POST`, `DELETE`.
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/shop/services/order?&force=true&fieldManager=ferry-operator`.
    pub uri: String,
    /// The JSON body (`null` when there is none).
    pub body: Value,
}

impl Seen {
    /// `"PATCH /api/v1/..."`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// A fake API server: answers like the real one and records every request.
pub struct ApiServer {
    handle: Handle,
    /// Requests whose path contains the key are answered with this status code and message.
    failures: HashMap<String, (u16, String)>,
    /// The MicroService, answered to a patch of it (seed, status).
    microservice: Value,
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder().status(code).body(Body::from(bytes)).unwrap_or_else(|_| Response::new(Body::empty()))
}

fn status_body(code: u16, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": "Forbidden", "code": code})
}

impl ApiServer {
    /// Makes requests whose path contains `path` fail with `code` and `message`.
    pub fn fail(mut self, path: &str, code: u16, message: &str) -> Self {
        self.failures.insert(path.into(), (code, message.into()));
        self
    }

    /// Answers requests until every client is gone; returns them in the order they came.
    pub async fn serve(mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some((request, send)) = self.handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let uri = parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default();
            let answer = self.answer(&parts.method, &uri, &body);
            seen.push(Seen { method: parts.method, uri, body });
            send.send_response(answer);
        }
        seen
    }

    fn answer(&self, method: &Method, uri: &str, body: &Value) -> Response<Body> {
        if let Some((code, message)) =
            (self.failures.iter()).find(|(path, _)| uri.contains(path.as_str())).map(|(_, f)| f)
        {
            let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return respond(code, &status_body(code.as_u16(), message));
        }
        let path = uri.split('?').next().unwrap_or_default();
        match *method {
            Method::DELETE => respond(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Success"}),
            ),
            Method::POST => respond(StatusCode::CREATED, body),
            Method::GET => respond(StatusCode::NOT_FOUND, &status_body(404, "not found")),
            _ if path.contains("/microservices/") => respond(StatusCode::OK, &self.microservice),
            _ if body.get("kind").is_some() => respond(StatusCode::OK, body),
            // A merge patch of a Deployment's size: answer with the Deployment it names.
            _ => {
                let name = path.rsplit('/').next().unwrap_or_default();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name}}),
                )
            }
        }
    }
}

fn filled<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for obj in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(obj));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

fn store_of<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = reflector::store();
    filled(&mut writer, objects);
    reader
}

fn cloned<K: Clone>(o: &Option<Arc<K>>) -> Vec<K> {
    o.iter().map(|a| a.as_ref().clone()).collect()
}

/// The cache of an optional CRD's children: holding `objects` when the CRD is `served`, never
/// ready otherwise (as in the operator, whose watch starts once the CRD is served).
fn optional_store(
    resource: ApiResource,
    served: bool,
    objects: impl IntoIterator<Item = PartialObjectMeta<DynamicObject>>,
) -> Store<PartialObjectMeta<DynamicObject>> {
    let mut writer = Writer::new(resource);
    if served {
        filled(&mut writer, objects);
    }
    writer.as_reader()
}

/// A cache of `kind` that has not finished its first list yet (right after a start), and its
/// writer, which must live as long as the cache is read (a dropped writer fails the wait).
pub fn still_filling<K>(kind: K::DynamicType) -> (Store<K>, Box<dyn std::any::Any>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let writer = Writer::new(kind);
    (writer.as_reader(), Box::new(writer))
}

/// Caches holding what `observed` says, ready but for those of CRDs that are not served.
pub fn stores(observed: &Observed) -> Stores {
    let deployments =
        cloned(&observed.deployment).into_iter().chain(observed.revisions.iter().map(|d| d.as_ref().clone()));
    let services = cloned(&observed.service).into_iter().chain(cloned(&observed.preview_service));
    let microservices = std::iter::once(observed.microservice.as_ref().clone())
        .chain(observed.dependencies.values().map(|m| m.as_ref().clone()));
    let served = &observed.crds;
    Stores {
        microservices: store_of(microservices),
        deployments: store_of(deployments),
        services: store_of(services),
        autoscalers: store_of(cloned(&observed.autoscaler)),
        disruption_budgets: store_of(cloned(&observed.disruption_budget)),
        service_monitors: optional_store(
            service_monitor::api_resource(),
            served.service_monitors,
            cloned(&observed.service_monitor),
        ),
        prometheus_rules: optional_store(
            prometheus_rule::api_resource(),
            served.prometheus_rules,
            cloned(&observed.prometheus_rule),
        ),
        scaled_objects: optional_store(
            scaled_object::api_resource(),
            served.scaled_objects,
            cloned(&observed.scaled_object),
        ),
    }
}

/// A fake API server's context, and the receiver of the requeue triggers.
pub type Mocked =
    (Arc<Context>, ApiServer, mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<MicroService>>);

/// A context whose client is mocked and whose caches hold `observed`; `leader` says whether it may
/// write. Returns the fake API server and the receiver of the requeue triggers.
pub fn context(observed: &Observed, leader: bool) -> Mocked {
    context_with_stores(observed, leader, stores(observed))
}

/// [`context`] with the caches given.
pub fn context_with_stores(observed: &Observed, leader: bool, stores: Stores) -> Mocked {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (trigger, triggered) = mpsc::unbounded();
    let reporter = Reporter { controller: "ferry-operator".into(), instance: Some("test".into()) };
    let crds = OptionalCrds {
        service_monitors: OptionalCrd::fixed(service_monitor::api_resource(), observed.crds.service_monitors),
        prometheus_rules: OptionalCrd::fixed(prometheus_rule::api_resource(), observed.crds.prometheus_rules),
        scaled_objects: OptionalCrd::fixed(scaled_object::api_resource(), observed.crds.scaled_objects),
    };
    let ctx = Context {
        recorder: Recorder::new(client.clone(), reporter),
        checks: CheckRunner::new(
            Some(client.clone()),
            HttpChecks::new(Vec::new()).expect("the check client builds"),
            trigger.clone(),
        ),
        client,
        metrics: Arc::new(Metrics::default()),
        stores,
        crds,
        may_write: Arc::new(AtomicBool::new(leader)),
        failures: Mutex::new(HashMap::new()),
        trigger,
    };
    let server = ApiServer {
        handle,
        failures: HashMap::new(),
        microservice: serde_json::to_value(observed.microservice.as_ref()).unwrap_or_default(),
    };
    (Arc::new(ctx), server, triggered)
}
