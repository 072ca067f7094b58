//! Startup, readiness and liveness probes generated from `spec.health` and the ports.

use k8s_openapi::{
    api::core::v1::{GRPCAction, HTTPGetAction, Probe, TCPSocketAction},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::crd::{MicroService, PortProtocol, PortSpec, ProbeOverrides};

/// Default HTTP path probed on an http port.
pub const DEFAULT_HTTP_PATH: &str = "/healthz";

/// The three generated probes of the container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probes {
    /// Gates the other two until the process is up (generous failure threshold for slow starts).
    pub startup: Option<Probe>,
    /// Takes the pod out of the Service endpoints while failing.
    pub readiness: Option<Probe>,
    /// Restarts the container while failing.
    pub liveness: Option<Probe>,
}

/// Ferry's timing defaults for one probe kind.
struct Defaults {
    period: i32,
    failure_threshold: i32,
    timeout: i32,
}

const STARTUP: Defaults = Defaults { period: 2, failure_threshold: 30, timeout: 1 };
const READINESS: Defaults = Defaults { period: 5, failure_threshold: 3, timeout: 1 };
const LIVENESS: Defaults = Defaults { period: 10, failure_threshold: 3, timeout: 1 };

/// The port probes target: `health.port`, else the first grpc port, else the first http port, else
/// the first port.
pub fn health_port(ms: &MicroService) -> Option<&PortSpec> {
    let ports = &ms.spec.ports;
    if let Some(name) = ms.spec.health.as_ref().and_then(|h| h.port.as_deref()) {
        return ports.iter().find(|p| p.name == name);
    }
    ports
        .iter()
        .find(|p| p.protocol == PortProtocol::Grpc)
        .or_else(|| ports.iter().find(|p| p.protocol == PortProtocol::Http))
        .or_else(|| ports.first())
}

/// Builds the probes. With `health.enabled: false`, or no port at all, there are none.
pub fn probes(ms: &MicroService) -> Probes {
    let health = ms.spec.health.clone().unwrap_or_default();
    if health.enabled == Some(false) {
        return Probes::default();
    }
    let Some(port) = health_port(ms) else {
        return Probes::default();
    };
    let base = match port.protocol {
        PortProtocol::Grpc => Probe {
            grpc: Some(GRPCAction { port: port.port, service: health.grpc_service.clone() }),
            ..Probe::default()
        },
        PortProtocol::Http => Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String(port.name.clone()),
                path: Some(health.path.clone().unwrap_or_else(|| DEFAULT_HTTP_PATH.into())),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        },
        PortProtocol::Tcp => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(port.name.clone()),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        },
    };
    Probes {
        startup: tuned(&base, &STARTUP, health.startup.as_ref()),
        readiness: tuned(&base, &READINESS, health.readiness.as_ref()),
        liveness: tuned(&base, &LIVENESS, health.liveness.as_ref()),
    }
}

fn tuned(base: &Probe, defaults: &Defaults, overrides: Option<&ProbeOverrides>) -> Option<Probe> {
    let o = overrides.cloned().unwrap_or_default();
    if o.disabled == Some(true) {
        return None;
    }
    Some(Probe {
        initial_delay_seconds: o.initial_delay_seconds,
        period_seconds: Some(o.period_seconds.unwrap_or(defaults.period)),
        timeout_seconds: Some(o.timeout_seconds.unwrap_or(defaults.timeout)),
        failure_threshold: Some(o.failure_threshold.unwrap_or(defaults.failure_threshold)),
        ..base.clone()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn a_grpc_port_gets_native_grpc_probes_against_the_whole_server() {
        let p = probes(&order());
        for probe in [p.startup, p.readiness, p.liveness] {
            let grpc = probe.expect("probe").grpc.expect("grpc action");
            assert_eq!(grpc.port, 50051);
            assert_eq!(grpc.service, None);
        }
    }

    #[test]
    fn the_grpc_health_service_name_is_passed_through() {
        let p = probes(&from(json!({"health": {"grpcService": "shop.Order"}})));
        assert_eq!(p.readiness.expect("probe").grpc.expect("grpc").service.as_deref(), Some("shop.Order"));
    }

    #[test]
    fn a_grpc_port_is_preferred_over_an_earlier_http_port() {
        let ms = from(json!({"ports": [
            {"name": "http", "port": 8080, "protocol": "http"},
            {"name": "grpc", "port": 50051, "protocol": "grpc"}
        ]}));
        assert_eq!(health_port(&ms).expect("port").name, "grpc");
    }

    #[test]
    fn an_http_port_gets_http_get_probes_on_healthz_by_name() {
        let ms = from(json!({"ports": [{"name": "web", "port": 8080, "protocol": "http"}]}));
        let get = probes(&ms).liveness.expect("probe").http_get.expect("http");
        assert_eq!(get.port, IntOrString::String("web".into()));
        assert_eq!(get.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn the_health_path_overrides_the_http_default() {
        let ms = from(json!({
            "ports": [{"name": "web", "port": 8080, "protocol": "http"}],
            "health": {"path": "/ready"}
        }));
        assert_eq!(
            probes(&ms).readiness.expect("probe").http_get.expect("http").path.as_deref(),
            Some("/ready")
        );
    }

    #[test]
    fn a_tcp_port_gets_tcp_socket_probes() {
        let ms = from(json!({"ports": [{"name": "db", "port": 5432}]}));
        assert!(probes(&ms).startup.expect("probe").tcp_socket.is_some());
    }

    #[test]
    fn the_health_port_selects_which_port_is_probed() {
        let ms = from(json!({
            "ports": [
                {"name": "grpc", "port": 50051, "protocol": "grpc"},
                {"name": "admin", "port": 8081, "protocol": "http"}
            ],
            "health": {"port": "admin"}
        }));
        let p = probes(&ms).readiness.expect("probe");
        assert!(p.grpc.is_none());
        assert_eq!(p.http_get.expect("http").port, IntOrString::String("admin".into()));
    }

    #[test]
    fn defaults_give_startup_a_long_budget_and_liveness_a_slow_period() {
        let p = probes(&order());
        let startup = p.startup.expect("startup");
        assert_eq!((startup.period_seconds, startup.failure_threshold), (Some(2), Some(30)));
        let readiness = p.readiness.expect("readiness");
        assert_eq!((readiness.period_seconds, readiness.failure_threshold), (Some(5), Some(3)));
        assert_eq!(p.liveness.expect("liveness").period_seconds, Some(10));
    }

    #[test]
    fn per_probe_overrides_replace_only_the_fields_given() {
        let ms = from(json!({"health": {"liveness": {"periodSeconds": 20, "initialDelaySeconds": 5}}}));
        let liveness = probes(&ms).liveness.expect("liveness");
        assert_eq!(liveness.period_seconds, Some(20));
        assert_eq!(liveness.initial_delay_seconds, Some(5));
        assert_eq!(liveness.failure_threshold, Some(3));
    }

    #[test]
    fn a_single_probe_can_be_disabled() {
        let p = probes(&from(json!({"health": {"liveness": {"disabled": true}}})));
        assert!(p.liveness.is_none());
        assert!(p.readiness.is_some());
    }

    #[test]
    fn health_disabled_generates_no_probes() {
        assert_eq!(probes(&from(json!({"health": {"enabled": false}}))), Probes::default());
    }
}
