//! The mounted ConfigMap and the hash that rolls pods when its data changes.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMapVolumeSource, Volume, VolumeMount},
};
use sha2::{Digest, Sha256};

use crate::crd::MicroService;

/// Name of the config volume in the pod.
pub const CONFIG_VOLUME: &str = "config";
/// Default mount path of the config.
pub const DEFAULT_MOUNT_PATH: &str = "/etc/ferry/config";

/// Whether a change of the ConfigMap's data should roll the pods.
pub fn rolls_on_change(ms: &MicroService) -> bool {
    ms.spec.config.as_ref().is_some_and(|c| c.roll_on_change != Some(false))
}

/// Hash of a ConfigMap's contents (data and binaryData), independent of metadata.
pub fn config_hash(
    data: Option<&BTreeMap<String, String>>,
    binary_data: Option<&BTreeMap<String, ByteString>>,
) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in data.into_iter().flatten() {
        hasher.update((k.len() as u64).to_le_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_le_bytes());
        hasher.update(v.as_bytes());
    }
    hasher.update(b"\0binary\0");
    for (k, v) in binary_data.into_iter().flatten() {
        hasher.update((k.len() as u64).to_le_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.0.len() as u64).to_le_bytes());
        hasher.update(&v.0);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The config volume and its mount, when `spec.config` is set.
pub fn config_volume(ms: &MicroService) -> Option<(Volume, VolumeMount)> {
    let config = ms.spec.config.as_ref()?;
    let volume = Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config.name.clone(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: CONFIG_VOLUME.into(),
        mount_path: config.mount_path.clone().unwrap_or_else(|| DEFAULT_MOUNT_PATH.into()),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::fixtures::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_config_hash_changes_with_the_data_and_only_with_the_data() {
        let a = config_hash(Some(&data(&[("a", "1")])), None);
        assert_eq!(a, config_hash(Some(&data(&[("a", "1")])), None));
        assert_ne!(a, config_hash(Some(&data(&[("a", "2")])), None));
        assert_ne!(a, config_hash(Some(&data(&[("a", "1"), ("b", "")])), None));
    }

    #[test]
    fn the_config_hash_cannot_be_fooled_by_moving_bytes_between_key_and_value() {
        assert_ne!(
            config_hash(Some(&data(&[("ab", "c")])), None),
            config_hash(Some(&data(&[("a", "bc")])), None)
        );
    }

    #[test]
    fn binary_data_counts_towards_the_hash() {
        let bin = BTreeMap::from([("k".to_string(), ByteString(vec![1, 2]))]);
        assert_ne!(config_hash(None, None), config_hash(None, Some(&bin)));
    }

    #[test]
    fn the_config_map_is_mounted_read_only_at_the_default_path() {
        let ms = from(json!({"config": {"name": "order-config"}}));
        let (volume, mount) = config_volume(&ms).expect("volume");
        assert_eq!(volume.config_map.expect("cm").name, "order-config");
        assert_eq!(mount.mount_path, "/etc/ferry/config");
        assert_eq!(mount.read_only, Some(true));
        assert!(rolls_on_change(&ms));
    }

    #[test]
    fn hot_reload_is_chosen_with_roll_on_change_false() {
        let ms = from(json!({"config": {"name": "c", "rollOnChange": false, "mountPath": "/cfg"}}));
        assert!(!rolls_on_change(&ms));
        assert_eq!(config_volume(&ms).expect("volume").1.mount_path, "/cfg");
    }

    #[test]
    fn no_config_means_no_volume() {
        assert!(config_volume(&order()).is_none());
        assert!(!rolls_on_change(&order()));
    }
}
