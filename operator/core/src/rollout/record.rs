//! Pure: which switch facts the state machine reads, when the active Service and the status
//! disagree.
//!
//! The active Service carries the switch as annotations written in the same apply as its selector,
//! and the status records the same facts ([`SwitchRecord`]) right after. The Service alone is not a
//! safe source: deleting it, or removing its `ferry.dev/active-revision` annotation, would make the
//! machine read "no revision was ever promoted" and treat the newest revision as the first one,
//! moving traffic to it (even with no ready pod) and scaling the serving one to zero. So the
//! status is the record of what was promoted, and a Service that lost or changed its annotations is
//! read (and then rewritten) as the status records it. The one exception is a switch the Service
//! shows as newer than the record: the operator writes the Service first and the status after, so
//! a restart between the two leaves exactly that, and the Service is right.

use k8s_openapi::jiff::Timestamp;

use super::{Decision, RevisionObs, ServiceObs};
use crate::crd::SwitchRecord;

/// The switch facts a plan writes onto the active Service, as the status records them.
pub fn written_by(plan: &Decision) -> SwitchRecord {
    SwitchRecord {
        active: plan.active.clone(),
        previous: plan.previous.clone(),
        at: plan.switched_at.map(|t| t.to_string()),
        reason: plan.switch_reason.clone(),
        rolled_back: plan.rolled_back.clone(),
    }
}

/// The switch facts of an observed Service, as the status records them (none without an active
/// revision).
pub fn record_of(obs: &ServiceObs) -> Option<SwitchRecord> {
    Some(SwitchRecord {
        active: obs.active.clone()?,
        previous: obs.previous.clone(),
        at: obs.switched_at.map(|t| t.to_string()),
        reason: obs.switch_reason.clone(),
        rolled_back: obs.rolled_back.clone(),
    })
}

fn obs_of(record: &SwitchRecord) -> ServiceObs {
    ServiceObs {
        active: Some(record.active.clone()),
        previous: record.previous.clone(),
        switched_at: record.at.as_ref().and_then(|t| t.parse::<Timestamp>().ok()),
        rolled_back: record.rolled_back.clone(),
        switch_reason: record.reason.clone(),
    }
}

/// The switch facts to decide from: the Service's, unless the status records a promoted revision
/// that still exists and the Service lost it (deleted, annotation removed) or names another one
/// without a newer switch (edited by hand).
pub fn effective(
    service: ServiceObs,
    recorded: Option<&SwitchRecord>,
    revisions: &[RevisionObs],
) -> ServiceObs {
    let Some(record) = recorded.filter(|r| revisions.iter().any(|rev| rev.hash == r.active)) else {
        return service;
    };
    let from_status = obs_of(record);
    match service.active.as_deref() {
        Some(active) if active == record.active => ServiceObs {
            previous: service.previous.or(from_status.previous),
            switched_at: service.switched_at.or(from_status.switched_at),
            rolled_back: service.rolled_back.or(from_status.rolled_back),
            switch_reason: service.switch_reason.or(from_status.switch_reason),
            active: service.active,
        },
        Some(_) if service.switched_at > from_status.switched_at => service,
        _ => from_status,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(seconds).expect("time"))
    }

    fn revisions(hashes: &[&str]) -> Vec<RevisionObs> {
        hashes
            .iter()
            .map(|h| RevisionObs { hash: (*h).into(), replicas: 2, ..RevisionObs::default() })
            .collect()
    }

    fn switched(active: &str, previous: Option<&str>, when: i64) -> ServiceObs {
        ServiceObs {
            active: Some(active.into()),
            previous: previous.map(Into::into),
            switched_at: at(when),
            rolled_back: None,
            switch_reason: Some("Promotion".into()),
        }
    }

    #[test]
    fn a_deleted_active_service_is_read_as_the_status_records_it() {
        let record = record_of(&switched("v1", Some("v0"), 100)).expect("record");
        let effective = effective(ServiceObs::default(), Some(&record), &revisions(&["v1", "v2"]));
        assert_eq!(effective, switched("v1", Some("v0"), 100));
    }

    #[test]
    fn a_service_that_lost_some_annotations_gets_them_from_the_status() {
        let record = record_of(&switched("v1", Some("v0"), 100)).expect("record");
        let service = ServiceObs { active: Some("v1".into()), ..ServiceObs::default() };
        assert_eq!(effective(service, Some(&record), &revisions(&["v1"])), switched("v1", Some("v0"), 100));
    }

    #[test]
    fn an_active_annotation_edited_by_hand_is_overruled_by_the_status() {
        let record = record_of(&switched("v1", Some("v0"), 100)).expect("record");
        let mut edited = switched("v1", Some("v0"), 100);
        edited.active = Some("v2".into());
        assert_eq!(
            effective(edited, Some(&record), &revisions(&["v1", "v2"])),
            switched("v1", Some("v0"), 100)
        );
    }

    #[test]
    fn a_switch_newer_than_the_status_wins_because_the_status_is_written_after_it() {
        let record = record_of(&switched("v1", Some("v0"), 100)).expect("record");
        let newer = switched("v2", Some("v1"), 160);
        assert_eq!(effective(newer.clone(), Some(&record), &revisions(&["v1", "v2"])), newer);
    }

    #[test]
    fn a_status_from_before_the_record_existed_leaves_the_service_in_charge() {
        let service = switched("v2", Some("v1"), 160);
        assert_eq!(effective(service.clone(), None, &revisions(&["v1", "v2"])), service);
        assert_eq!(effective(ServiceObs::default(), None, &revisions(&["v1"])), ServiceObs::default());
    }

    #[test]
    fn a_recorded_revision_whose_deployment_is_gone_is_not_restored() {
        let record = record_of(&switched("v1", None, 100)).expect("record");
        assert_eq!(
            effective(ServiceObs::default(), Some(&record), &revisions(&["v2"])),
            ServiceObs::default()
        );
    }
}
