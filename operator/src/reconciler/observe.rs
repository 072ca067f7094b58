//! Gathers what one reconcile decides from: the MicroService's children from the caches, the
//! MicroServices its `dependsOn` reaches, the mounted ConfigMap's data, which optional CRDs are
//! served, and the check measurements taken since the last status.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Resource, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use ferry_operator_core::{
    crd::MicroService,
    desired::config,
    keys::{REVISION_LABEL, SELECTOR_LABEL, preview_service_name},
    plan::{ConfigObs, Observed, ServedCrds},
};

use super::{Context, Error, Result};

fn lookup<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new_with(name, K::DynamicType::default()).within(ns))
}

/// Everything `plan` reads for `ms`.
pub(super) async fn gather(ctx: &Context, ms: &Arc<MicroService>) -> Result<Observed> {
    let ns = ms.namespace().ok_or(Error::MissingNamespaceError)?;
    let name = ms.name_any();
    let stores = &ctx.stores;
    let crds = &ctx.crds;
    let sm = ObjectRef::new_with(&name, crds.service_monitors.resource.clone()).within(&ns);
    let pr = ObjectRef::new_with(&name, crds.prometheus_rules.resource.clone()).within(&ns);
    let so = ObjectRef::new_with(&name, crds.scaled_objects.resource.clone()).within(&ns);
    Ok(Observed {
        microservice: ms.clone(),
        deployment: lookup(&stores.deployments, &ns, &name),
        revisions: revisions(&stores.deployments, &ns, &name),
        service: lookup(&stores.services, &ns, &name),
        preview_service: lookup(&stores.services, &ns, &preview_service_name(&name)),
        autoscaler: lookup(&stores.autoscalers, &ns, &name),
        disruption_budget: lookup(&stores.disruption_budgets, &ns, &name),
        service_monitor: stores.service_monitors.get(&sm),
        prometheus_rule: stores.prometheus_rules.get(&pr),
        scaled_object: stores.scaled_objects.get(&so),
        dependencies: dependency_closure(&stores.microservices, ms, &ns),
        config: config_map(ctx, ms, &ns).await?,
        crds: ServedCrds {
            service_monitors: crds.service_monitors.served(),
            prometheus_rules: crds.prometheus_rules.served(),
            scaled_objects: crds.scaled_objects.served(),
        },
        measurements: ctx.checks.measurements(&ObjectRef::from_obj(ms.as_ref())),
    })
}

/// The namespace's Deployments that carry the MicroService's selector label and a revision label.
fn revisions(
    store: &Store<k8s_openapi::api::apps::v1::Deployment>,
    ns: &str,
    name: &str,
) -> Vec<Arc<k8s_openapi::api::apps::v1::Deployment>> {
    (store.state().into_iter())
        .filter(|d| {
            d.namespace().as_deref() == Some(ns)
                && d.labels().get(SELECTOR_LABEL).is_some_and(|v| v == name)
                && d.labels().contains_key(REVISION_LABEL)
        })
        .collect()
}

/// The MicroServices of the namespace that `ms` reaches through `dependsOn`, directly or not (for
/// the gate and the cycle check).
fn dependency_closure(
    store: &Store<MicroService>,
    ms: &MicroService,
    ns: &str,
) -> BTreeMap<String, Arc<MicroService>> {
    let mut found = BTreeMap::new();
    let mut queue: VecDeque<String> = ms.spec.depends_on.iter().flatten().map(|d| d.name.clone()).collect();
    while let Some(name) = queue.pop_front() {
        if found.contains_key(&name) {
            continue;
        }
        if let Some(dep) = lookup(store, ns, &name) {
            queue.extend(dep.spec.depends_on.iter().flatten().map(|d| d.name.clone()));
            found.insert(name, dep);
        }
    }
    found
}

/// The mounted ConfigMap's data hash, when a change of it should roll the pods (read from the API:
/// ConfigMaps are watched metadata-only).
async fn config_map(ctx: &Context, ms: &MicroService, ns: &str) -> Result<ConfigObs> {
    let Some(cfg) = ms.spec.config.as_ref().filter(|_| config::rolls_on_change(ms)) else {
        return Ok(ConfigObs::NotRolled);
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match cms.get_opt(&cfg.name).await? {
        Some(cm) => ConfigObs::Data(config::config_hash(cm.data.as_ref(), cm.binary_data.as_ref())),
        None => ConfigObs::Missing,
    })
}
