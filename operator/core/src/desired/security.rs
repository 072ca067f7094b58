//! The restricted Pod Security Standard, stamped into every generated pod.
//!
//! Restricted requires non-root, no privilege escalation, all capabilities dropped and a
//! RuntimeDefault seccomp profile. Ferry also makes the root filesystem read-only and mounts an
//! `emptyDir` at `/tmp` so that services still have a scratch directory.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, PodSecurityContext, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};

use crate::crd::MicroService;

/// Name of the writable scratch volume.
pub const TMP_VOLUME: &str = "tmp";
/// Where the scratch volume is mounted.
pub const TMP_MOUNT_PATH: &str = "/tmp";

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }
}

/// Pod-level security context.
pub fn pod_security_context(ms: &MicroService) -> PodSecurityContext {
    let pod = ms.spec.pod.as_ref();
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: pod.and_then(|p| p.run_as_user),
        run_as_group: pod.and_then(|p| p.run_as_group),
        fs_group: pod.and_then(|p| p.fs_group),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// Container-level security context.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The writable `/tmp` volume.
pub fn tmp_volume() -> Volume {
    Volume { name: TMP_VOLUME.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

/// The mount of [`tmp_volume`].
pub fn tmp_mount() -> VolumeMount {
    VolumeMount { name: TMP_VOLUME.into(), mount_path: TMP_MOUNT_PATH.into(), ..VolumeMount::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn containers_are_non_root_unprivileged_with_all_capabilities_dropped() {
        let sc = container_security_context();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.capabilities.expect("caps").drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.seccomp_profile.expect("seccomp").type_, "RuntimeDefault");
    }

    #[test]
    fn pods_use_the_runtime_default_seccomp_profile_and_run_as_non_root() {
        let psc = pod_security_context(&order());
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.expect("seccomp").type_, "RuntimeDefault");
        assert_eq!(psc.run_as_user, None);
    }

    #[test]
    fn numeric_user_and_group_ids_are_passed_through() {
        let ms = from(json!({"pod": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 2000}}));
        let psc = pod_security_context(&ms);
        assert_eq!((psc.run_as_user, psc.run_as_group, psc.fs_group), (Some(65532), Some(65532), Some(2000)));
    }

    #[test]
    fn tmp_is_a_writable_empty_dir() {
        assert!(tmp_volume().empty_dir.is_some());
        assert_eq!(tmp_mount().mount_path, "/tmp");
        assert_ne!(tmp_mount().read_only, Some(true));
    }
}
