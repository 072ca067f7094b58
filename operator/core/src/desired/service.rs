//! The Service: one named port per container port, with `appProtocol`.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{child_meta, labels};
use crate::crd::{MicroService, PortProtocol};

/// `appProtocol` for a port protocol (`kubernetes.io/h2c` tells proxies gRPC needs HTTP/2).
pub fn app_protocol(protocol: PortProtocol) -> Option<String> {
    match protocol {
        PortProtocol::Grpc => Some("kubernetes.io/h2c".into()),
        PortProtocol::Http => Some("http".into()),
        PortProtocol::Tcp => None,
    }
}

/// Builds the ClusterIP Service.
pub fn service(ms: &MicroService) -> Service {
    service_selecting(ms, None, Default::default())
}

/// A Service named `NAME` (or `NAME-<suffix>`) selecting only the pods of revision `revision` (all
/// of the MicroService's pods when `None`), with `annotations`.
pub fn service_selecting(
    ms: &MicroService,
    revision: Option<(&str, &str)>,
    annotations: std::collections::BTreeMap<String, String>,
) -> Service {
    let mut meta = child_meta(ms);
    let mut selector = labels::selector_labels(ms);
    if let Some((name, hash)) = revision {
        meta.name = Some(name.to_string());
        selector.insert(crate::keys::REVISION_LABEL.into(), hash.into());
    }
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(
                ms.spec
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.service_port(),
                        target_port: Some(IntOrString::String(p.name.clone())),
                        protocol: Some("TCP".into()),
                        app_protocol: app_protocol(p.protocol),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn every_port_becomes_a_named_service_port_targeting_the_container_port_by_name() {
        let ms = from(json!({"ports": [
            {"name": "grpc", "port": 50051, "protocol": "grpc", "servicePort": 80},
            {"name": "metrics", "port": 9090, "protocol": "http"},
            {"name": "raw", "port": 7000}
        ]}));
        let ports = service(&ms).spec.expect("spec").ports.expect("ports");
        assert_eq!(ports.len(), 3);
        assert_eq!((ports[0].name.as_deref(), ports[0].port), (Some("grpc"), 80));
        assert_eq!(ports[0].target_port, Some(IntOrString::String("grpc".into())));
        assert_eq!(ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        assert_eq!(ports[1].app_protocol.as_deref(), Some("http"));
        assert_eq!(ports[2].app_protocol, None);
    }

    #[test]
    fn the_service_selects_the_microservice_pods() {
        let spec = service(&order()).spec.expect("spec");
        assert_eq!(spec.selector, Some(labels::selector_labels(&order())));
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    }
}
