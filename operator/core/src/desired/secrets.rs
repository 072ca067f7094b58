//! `spec.secrets`: Secrets mounted read-only into the container, one directory each.

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use crate::crd::MicroService;

/// File mode with `pod.fsGroup`: owner and group read (the kubelet makes the fsGroup the files'
/// group, and the container joins that group).
pub const MODE_WITH_FS_GROUP: i32 = 0o440;
/// File mode without an fsGroup: the files belong to root, so a non-root container needs the
/// "other" read bit. Still never writable.
pub const MODE_WITHOUT_FS_GROUP: i32 = 0o444;

/// Name of the pod volume of the `index`-th entry of `spec.secrets`.
pub fn volume_name(index: usize) -> String {
    format!("secret-{index}")
}

/// The file mode of mounted Secret files for this MicroService.
pub fn default_mode(ms: &MicroService) -> i32 {
    if ms.spec.pod.as_ref().and_then(|p| p.fs_group).is_some() {
        MODE_WITH_FS_GROUP
    } else {
        MODE_WITHOUT_FS_GROUP
    }
}

/// One volume and one read-only mount per entry of `spec.secrets`, in order.
pub fn secret_volumes(ms: &MicroService) -> Vec<(Volume, VolumeMount)> {
    let mode = default_mode(ms);
    ms.spec
        .secrets
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            let volume = Volume {
                name: volume_name(i),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(s.name.clone()),
                    default_mode: Some(mode),
                    optional: s.optional,
                    items: s.items.as_ref().map(|items| {
                        items
                            .iter()
                            .map(|item| KeyToPath {
                                key: item.key.clone(),
                                path: item.path.clone(),
                                mode: None,
                            })
                            .collect()
                    }),
                }),
                ..Volume::default()
            };
            let mount = VolumeMount {
                name: volume_name(i),
                mount_path: s.mount_path.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            (volume, mount)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn no_secrets_means_no_secret_volumes() {
        assert!(secret_volumes(&order()).is_empty());
    }

    #[test]
    fn each_secret_is_mounted_read_only_at_its_own_path() {
        let ms = from(json!({"secrets": [
            {"name": "jwt", "mountPath": "/etc/ferry/jwt"},
            {"name": "db", "mountPath": "/etc/ferry/db"}
        ]}));
        let mounts = secret_volumes(&ms);
        assert_eq!(mounts.len(), 2);
        let (volume, mount) = &mounts[1];
        assert_eq!(volume.name, "secret-1");
        assert_eq!(volume.secret.as_ref().expect("secret").secret_name.as_deref(), Some("db"));
        assert_eq!(mount.name, "secret-1");
        assert_eq!(mount.mount_path, "/etc/ferry/db");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn files_are_group_readable_only_when_the_pod_has_an_fs_group() {
        let with = from(json!({"secrets": [{"name": "jwt", "mountPath": "/s"}], "pod": {"fsGroup": 65532}}));
        let without = from(json!({"secrets": [{"name": "jwt", "mountPath": "/s"}]}));
        let mode = |ms: &MicroService| secret_volumes(ms)[0].0.secret.as_ref().expect("secret").default_mode;
        assert_eq!(mode(&with), Some(0o440));
        assert_eq!(mode(&without), Some(0o444));
    }

    #[test]
    fn listed_items_select_keys_and_optional_passes_through() {
        let ms = from(json!({"secrets": [{
            "name": "jwt", "mountPath": "/s", "optional": true,
            "items": [{"key": "jwt.key", "path": "key"}]
        }]}));
        let source = secret_volumes(&ms)[0].0.secret.clone().expect("secret");
        assert_eq!(source.optional, Some(true));
        let items = source.items.expect("items");
        assert_eq!((items[0].key.as_str(), items[0].path.as_str()), ("jwt.key", "key"));
    }

    #[test]
    fn without_items_every_key_of_the_secret_is_mounted() {
        let ms = from(json!({"secrets": [{"name": "jwt", "mountPath": "/s"}]}));
        let source = secret_volumes(&ms)[0].0.secret.clone().expect("secret");
        assert!(source.items.is_none());
        assert_eq!(source.optional, None);
    }
}
