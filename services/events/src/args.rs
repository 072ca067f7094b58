//! The flags both services take for the broker. Each also reads an environment variable and
//! the config file key of the same name in snake_case (the file's keys live in
//! `ferry_service_common::config::FileConfig`).

use crate::{EventSettings, Names};

/// Broker flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EventArgs {
    /// NATS JetStream URL, e.g. `nats://nats:4222` (comma-separated for a cluster). When set,
    /// events are on: order-service writes every state change's event to its outbox and
    /// relays it, and both services consume their events. Needs a restart to change.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Prefix of the streams, subjects and durable consumers (`ferry` → stream
    /// FERRY_ORDER_EVENTS, subjects ferry.order.*) [default: ferry].
    #[arg(long, env = "EVENTS_PREFIX")]
    pub events_prefix: Option<String>,
    /// Deliveries of an event that cannot be handled (undecodable, unknown, failing) before
    /// it is parked in the dead-letter stream; outages are retried without limit
    /// [default: 5].
    #[arg(long, env = "EVENT_MAX_DELIVERIES")]
    pub event_max_deliveries: Option<u32>,
}

/// A broker setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct InvalidSetting {
    /// The setting.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl EventArgs {
    /// The settings, flags over the file's values (`file_*`); `None` when no URL is given.
    pub fn resolve(
        &self,
        file_url: Option<String>,
        file_prefix: Option<String>,
        file_max_deliveries: Option<u32>,
    ) -> Result<Option<EventSettings>, InvalidSetting> {
        let Some(url) = self.nats_url.clone().or(file_url).filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let prefix =
            self.events_prefix.clone().or(file_prefix).unwrap_or_else(|| crate::names::DEFAULT_PREFIX.into());
        let names = Names::new(&prefix)
            .map_err(|e| InvalidSetting { field: "events_prefix", reason: e.to_string() })?;
        let max_deliveries = self.event_max_deliveries.or(file_max_deliveries).unwrap_or(5);
        if max_deliveries == 0 {
            return Err(InvalidSetting { field: "event_max_deliveries", reason: "must be ≥ 1".into() });
        }
        Ok(Some(EventSettings { max_deliveries, ..EventSettings::new(url.trim(), names) }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_off_without_a_url_and_flags_win_over_the_file() {
        assert_eq!(EventArgs::default().resolve(None, Some("x".into()), None).unwrap(), None);
        let args = EventArgs { events_prefix: Some("flag".into()), ..Default::default() };
        let on = args.resolve(Some("nats://f:4222".into()), Some("file".into()), Some(3)).unwrap().unwrap();
        assert_eq!(
            (on.nats_url.as_str(), on.names.prefix(), on.max_deliveries),
            ("nats://f:4222", "flag", 3)
        );
    }

    #[test]
    fn a_bad_prefix_or_zero_deliveries_is_refused() {
        let url = Some("nats://x:4222".to_string());
        assert_eq!(
            EventArgs::default().resolve(url.clone(), Some("A.B".into()), None).unwrap_err().field,
            "events_prefix"
        );
        assert_eq!(
            EventArgs::default().resolve(url, None, Some(0)).unwrap_err().field,
            "event_max_deliveries"
        );
    }
}
