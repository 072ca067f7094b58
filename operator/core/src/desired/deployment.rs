//! The Deployment: pod template with restricted security, probes, env and volumes.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::ResourceExt;

use super::{Inputs, child_meta, config, effective_replicas, labels, probes, secrets, security};
use crate::{
    crd::MicroService,
    dependencies,
    keys::{
        CONFIG_HASH_ANNOTATION, HASH_LEN, IMAGE_ANNOTATION, REPLICAS_ANNOTATION, REVISION_LABEL,
        SPEC_ANNOTATION, deployment_name,
    },
};

/// Old ReplicaSets kept for `kubectl rollout undo`.
pub const REVISION_HISTORY_LIMIT: i32 = 5;
/// Seconds before a stuck rollout is reported (`ProgressDeadlineExceeded` → `Degraded`).
pub const PROGRESS_DEADLINE_SECONDS: i32 = 600;

/// Builds the Deployment.
pub fn deployment(ms: &MicroService, inputs: &Inputs) -> Deployment {
    let rolling = ms.spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    Deployment {
        metadata: child_meta(ms),
        spec: Some(DeploymentSpec {
            replicas: Some(effective_replicas(ms)),
            selector: LabelSelector {
                match_labels: Some(labels::selector_labels(ms)),
                ..LabelSelector::default()
            },
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(rolling.max_surge.unwrap_or_else(|| IntOrString::String("25%".into()))),
                    max_unavailable: Some(rolling.max_unavailable.unwrap_or(IntOrString::Int(0))),
                }),
            }),
            template: pod_template(ms, inputs),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The revision hash of a pod template: names the revision's Deployment (`NAME-<hash>`) and labels
/// its pods. The replica count is not part of it, so scaling never makes a new revision.
pub fn revision_hash(template: &PodTemplateSpec) -> String {
    let mut hash = super::hash_of(template);
    hash.truncate(HASH_LEN);
    hash
}

/// The Deployment of one blue-green revision: `NAME-<hash>`, selecting and labelling its pods with
/// `ferry.dev/revision: <hash>`, annotated with its image and the spec it was built from.
pub fn revision_deployment(
    ms: &MicroService,
    inputs: &Inputs,
    template: &PodTemplateSpec,
    hash: &str,
    replicas: i32,
) -> Deployment {
    let mut d = deployment(ms, inputs);
    d.metadata.name = Some(deployment_name(&ms.name_any(), hash));
    d.metadata.labels.get_or_insert_with(Default::default).insert(REVISION_LABEL.into(), hash.into());
    let mut spec_copy = ms.spec.clone();
    spec_copy.replicas = None;
    spec_copy.paused = None;
    let annotations = d.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(IMAGE_ANNOTATION.into(), ms.spec.image.clone());
    annotations.insert(REPLICAS_ANNOTATION.into(), replicas.to_string());
    annotations.insert(SPEC_ANNOTATION.into(), serde_json::to_string(&spec_copy).unwrap_or_default());
    if let Some(spec) = d.spec.as_mut() {
        spec.replicas = Some(replicas);
        spec.revision_history_limit = Some(1);
        spec.selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_LABEL.into(), hash.into());
        let mut template = template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_LABEL.into(), hash.into());
        spec.template = template;
    }
    d
}

/// The Deployment of an older revision, rebuilt from the spec it recorded (`ferry.dev/spec`) at
/// `replicas`, when the current inputs (dependency addresses, config hash) still make the same pod
/// template, i.e. its hash is `hash`. `None` when they do not, or the record does not parse.
pub fn rebuild_revision(
    ms: &MicroService,
    inputs: &Inputs,
    recorded_spec: &str,
    hash: &str,
    replicas: i32,
) -> Option<Deployment> {
    let mut old = ms.clone();
    old.spec = serde_json::from_str(recorded_spec).ok()?;
    let inputs = Inputs { extras: crate::validation::check(&old).ok()?, ..inputs.clone() };
    let template = pod_template(&old, &inputs);
    (revision_hash(&template) == hash).then(|| revision_deployment(&old, &inputs, &template, hash, replicas))
}

/// Builds the pod template.
pub fn pod_template(ms: &MicroService, inputs: &Inputs) -> PodTemplateSpec {
    let spec = &ms.spec;
    let pod = spec.pod.clone().unwrap_or_default();

    let mut annotations: BTreeMap<String, String> = pod.annotations.clone().unwrap_or_default();
    if let Some(hash) = &inputs.config_hash {
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), hash.clone());
    }

    let mut volumes = vec![security::tmp_volume()];
    let mut mounts = vec![security::tmp_mount()];
    if let Some((volume, mount)) = config::config_volume(ms) {
        volumes.push(volume);
        mounts.push(mount);
    }
    for (volume, mount) in secrets::secret_volumes(ms) {
        volumes.push(volume);
        mounts.push(mount);
    }

    let probes = probes::probes(ms);
    let container = Container {
        name: ms.name_any(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: non_empty(env(ms, inputs)),
        env_from: non_empty(inputs.extras.env_from.clone()),
        ports: Some(
            spec.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        resources: spec.resources.clone(),
        startup_probe: probes.startup,
        readiness_probe: probes.readiness,
        liveness_probe: probes.liveness,
        security_context: Some(security::container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let topology = inputs
        .extras
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut c| {
            c.label_selector.get_or_insert_with(|| LabelSelector {
                match_labels: Some(labels::selector_labels(ms)),
                ..LabelSelector::default()
            });
            c
        })
        .collect();

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::pod_labels(ms)),
            annotations: if annotations.is_empty() { None } else { Some(annotations) },
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            service_account_name: spec.service_account_name.clone(),
            automount_service_account_token: Some(spec.automount_service_account_token.unwrap_or(false)),
            security_context: Some(security::pod_security_context(ms)),
            volumes: Some(volumes),
            node_selector: pod.node_selector.clone(),
            tolerations: non_empty(inputs.extras.tolerations.clone()),
            affinity: inputs.extras.affinity.clone(),
            topology_spread_constraints: non_empty(topology),
            priority_class_name: pod.priority_class_name.clone(),
            termination_grace_period_seconds: pod.termination_grace_period_seconds,
            ..PodSpec::default()
        }),
    }
}

/// The container environment: the user's `env`, then the injected dependency addresses.
pub fn env(ms: &MicroService, inputs: &Inputs) -> Vec<EnvVar> {
    let mut env = ms.spec.env.clone().unwrap_or_default();
    env.extend(dependencies::dependency_env(ms, &inputs.dependencies));
    env
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() { None } else { Some(v) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        desired::{ResolvedDependency, fixtures::*},
        validation,
    };

    fn pod_spec(d: &Deployment) -> PodSpec {
        d.spec.clone().expect("spec").template.spec.expect("pod spec")
    }

    fn container(d: &Deployment) -> Container {
        pod_spec(d).containers.remove(0)
    }

    #[test]
    fn the_deployment_selects_pods_by_the_reserved_selector_label() {
        let d = deployment(&order(), &Inputs::default());
        let spec = d.spec.expect("spec");
        assert_eq!(spec.selector.match_labels, Some(labels::selector_labels(&order())));
        let template_labels = spec.template.metadata.expect("meta").labels.expect("labels");
        assert_eq!(template_labels.get("ferry.dev/microservice").map(String::as_str), Some("order"));
    }

    #[test]
    fn the_container_runs_the_image_with_its_named_ports() {
        let c = container(&deployment(&order(), &Inputs::default()));
        assert_eq!(c.name, "order");
        assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/order:1.0.0"));
        let port = &c.ports.expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("grpc"), 50051));
    }

    #[test]
    fn every_pod_gets_the_restricted_security_context_and_a_writable_tmp() {
        let d = deployment(&order(), &Inputs::default());
        let pod = pod_spec(&d);
        assert_eq!(pod.security_context, Some(security::pod_security_context(&order())));
        let c = &pod.containers[0];
        assert_eq!(c.security_context, Some(security::container_security_context()));
        assert!(pod.volumes.expect("volumes").iter().any(|v| v.name == "tmp" && v.empty_dir.is_some()));
        assert!(c.volume_mounts.as_ref().expect("mounts").iter().any(|m| m.mount_path == "/tmp"));
    }

    #[test]
    fn the_service_account_token_is_not_mounted_unless_asked() {
        let d = deployment(&order(), &Inputs::default());
        assert_eq!(pod_spec(&d).automount_service_account_token, Some(false));
        let ms = from(json!({"automountServiceAccountToken": true, "serviceAccountName": "order"}));
        let pod = pod_spec(&deployment(&ms, &Inputs::default()));
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.service_account_name.as_deref(), Some("order"));
    }

    #[test]
    fn the_container_gets_generated_grpc_probes() {
        let c = container(&deployment(&order(), &Inputs::default()));
        assert!(c.startup_probe.expect("startup").grpc.is_some());
        assert!(c.readiness_probe.expect("readiness").grpc.is_some());
        assert!(c.liveness_probe.expect("liveness").grpc.is_some());
    }

    #[test]
    fn dependency_addresses_are_injected_after_the_user_env() {
        let ms = from(json!({"env": [{"name": "MODE", "value": "prod"}]}));
        let inputs = Inputs {
            dependencies: vec![ResolvedDependency {
                name: "inventory".into(),
                env: "INVENTORY_ADDR".into(),
                address: "inventory.shop.svc:50051".into(),
                available: true,
            }],
            ..Inputs::default()
        };
        let env = container(&deployment(&ms, &inputs)).env.expect("env");
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["MODE", "INVENTORY_ADDR"]);
        assert_eq!(env[1].value.as_deref(), Some("inventory.shop.svc:50051"));
    }

    #[test]
    fn a_config_hash_is_stamped_on_the_pod_template_so_a_change_rolls_the_pods() {
        let ms = from(json!({"config": {"name": "order-config"}}));
        let a = deployment(&ms, &Inputs { config_hash: Some("aaa".into()), ..Inputs::default() });
        let b = deployment(&ms, &Inputs { config_hash: Some("bbb".into()), ..Inputs::default() });
        let annotations = |d: &Deployment| {
            d.spec.clone().expect("spec").template.metadata.expect("meta").annotations.expect("annotations")
        };
        assert_eq!(annotations(&a).get(CONFIG_HASH_ANNOTATION).map(String::as_str), Some("aaa"));
        assert_ne!(a.spec, b.spec);
        let volumes = pod_spec(&a).volumes.expect("volumes");
        assert!(volumes.iter().any(|v| { v.config_map.as_ref().is_some_and(|c| c.name == "order-config") }));
    }

    #[test]
    fn mounted_secrets_become_read_only_volumes_next_to_the_config() {
        let ms = from(json!({
            "config": {"name": "order-config"},
            "secrets": [{"name": "shop-jwt", "mountPath": "/etc/ferry/jwt"}],
            "pod": {"fsGroup": 65532}
        }));
        let pod = pod_spec(&deployment(&ms, &Inputs::default()));
        let volume =
            pod.volumes.expect("volumes").into_iter().find(|v| v.secret.is_some()).expect("a secret volume");
        let secret = volume.secret.expect("secret");
        assert_eq!(secret.secret_name.as_deref(), Some("shop-jwt"));
        assert_eq!(secret.default_mode, Some(0o440));
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .expect("mounts")
            .into_iter()
            .find(|m| m.name == volume.name)
            .expect("its mount");
        assert_eq!(mount.mount_path, "/etc/ferry/jwt");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn without_a_config_hash_the_template_has_no_hash_annotation() {
        let ms = from(json!({"config": {"name": "c", "rollOnChange": false}}));
        let d = deployment(&ms, &Inputs::default());
        assert!(d.spec.expect("spec").template.metadata.expect("meta").annotations.is_none());
    }

    #[test]
    fn scheduling_fields_pass_through_and_spread_constraints_default_to_this_service() {
        let ms = from(json!({"pod": {
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"podAntiAffinity": {}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
            "priorityClassName": "high",
            "annotations": {"a": "b"}
        }}));
        let extras = validation::check(&ms).expect("valid");
        let d = deployment(&ms, &Inputs { extras, ..Inputs::default() });
        let pod = pod_spec(&d);
        assert_eq!(pod.node_selector.expect("ns").get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(pod.tolerations.expect("tolerations").len(), 1);
        assert!(pod.affinity.is_some());
        let spread = &pod.topology_spread_constraints.expect("spread")[0];
        assert_eq!(
            spread.label_selector.as_ref().expect("selector").match_labels,
            Some(labels::selector_labels(&ms))
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    }

    #[test]
    fn rolling_updates_surge_without_losing_availability_by_default() {
        let d = deployment(&order(), &Inputs::default());
        let ru = d.spec.expect("spec").strategy.expect("strategy").rolling_update.expect("ru");
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    }

    #[test]
    fn the_deployment_runs_the_effective_replica_count() {
        let ms = from(json!({"replicas": 3}));
        assert_eq!(deployment(&ms, &Inputs::default()).spec.expect("spec").replicas, Some(3));
    }

    #[test]
    fn an_older_revision_is_rebuilt_from_its_recorded_spec_while_the_inputs_still_match() {
        let v1 = from(json!({"replicas": 2, "env": [{"name": "V", "value": "1"}]}));
        let template = pod_template(&v1, &Inputs::default());
        let hash = revision_hash(&template);
        let original = revision_deployment(&v1, &Inputs::default(), &template, &hash, 2);
        let recorded = original
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::keys::SPEC_ANNOTATION))
            .expect("recorded spec")
            .clone();
        // The MicroService has moved on to v2 since.
        let v2 = from(json!({"replicas": 2, "env": [{"name": "V", "value": "2"}]}));
        let rebuilt = rebuild_revision(&v2, &Inputs::default(), &recorded, &hash, 2);
        assert_eq!(rebuilt, Some(original));
        // Another config hash makes another template: nothing to rebuild from.
        let changed = Inputs { config_hash: Some("other".into()), ..Inputs::default() };
        assert_eq!(rebuild_revision(&v2, &changed, &recorded, &hash, 2), None);
        assert_eq!(rebuild_revision(&v2, &Inputs::default(), "{", &hash, 2), None);
    }
}
