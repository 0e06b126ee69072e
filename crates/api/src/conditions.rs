//! Every condition type and reason ClusterLink reports, in one place: the gateway's model, the
//! data plane, the Kubernetes controller and the CLI's tables all name them from here
//! (`Kind::condition` says which type each kind carries).

use std::fmt;

/// The conditions ClusterLink reports (Kubernetes' `metav1.Condition.type`): the one each kind
/// carries ([`crate::Kind::condition`]), and an Import's [`ConditionType::SourcesReady`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// A Peer: whether its gateways answer health probes.
    PeerReachable,
    /// An Export: whether connections to it can reach its service.
    ExportValid,
    /// An Import: whether its local port serves clients.
    ImportValid,
    /// An access policy: whether it is enforced (Kubernetes mode, where the API server accepts
    /// objects before ClusterLink validates them).
    PolicyValid,
    /// An Import (standalone mode): whether its sources name defined Peers that answer probes.
    SourcesReady,
    /// The gateway's own certificate (`/version`): whether it is valid, and renewing on time if
    /// it renews itself.
    CertificateValid,
}

impl ConditionType {
    pub const ALL: [ConditionType; 6] = [
        ConditionType::PeerReachable,
        ConditionType::ExportValid,
        ConditionType::ImportValid,
        ConditionType::PolicyValid,
        ConditionType::SourcesReady,
        ConditionType::CertificateValid,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::PeerReachable => "PeerReachable",
            ConditionType::ExportValid => "ExportValid",
            ConditionType::ImportValid => "ImportValid",
            ConditionType::PolicyValid => "PolicyValid",
            ConditionType::SourcesReady => "SourcesReady",
            ConditionType::CertificateValid => "CertificateValid",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a condition has its status (`metav1.Condition.reason`): one word a person can search
/// for, with the message saying what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionReason {
    /// Admitted by the model; nothing running has reported on it yet.
    Accepted,
    /// A Peer not probed yet.
    NotProbed,
    /// A Peer's gateway answered a probe.
    Probed,
    /// No gateway of a Peer answered.
    Unreachable,
    /// An Import's port is bound.
    Listening,
    /// An Import's port could not be bound.
    PortUnavailable,
    /// An Import's Service forwards to the data plane (Kubernetes).
    ServiceReady,
    /// An Export names its host explicitly.
    HostSet,
    /// An Export's same-named Service exists (Kubernetes).
    ServiceFound,
    /// An Export's same-named Service is an import's: exporting it would loop.
    ServiceIsImport,
    /// An Export's same-named Service does not exist (Kubernetes).
    ServiceNotFound,
    /// An Export without a port names a Service with several ports (Kubernetes).
    ServicePortAmbiguous,
    /// A policy is part of every decision in its scope.
    Enforced,
    /// The object does not validate.
    Invalid,
    /// An Import's Service name is taken by a Service ClusterLink does not manage.
    ServiceConflict,
    /// An Import's target port is another import's.
    TargetPortConflict,
    /// No target port is left to allocate.
    NoFreeTargetPort,
    /// Every source of an Import names a Peer that answers probes.
    PeersReachable,
    /// A source of an Import names a Peer that is not defined.
    NoSuchPeer,
    /// No Peer of an Import's sources answers probes.
    PeersUnreachable,
    /// No reachable Peer of an Import's sources offers the export it names: the export does
    /// not exist there, or its policies deny it to every client of this site.
    ExportNotOffered,
    /// The gateway's certificate is valid, and not near its end (or renews itself on time).
    CertificateCurrent,
    /// The gateway's certificate, which does not renew itself, ends soon.
    ExpiresSoon,
    /// The last attempt to renew the gateway's certificate failed.
    RenewalFailing,
    /// The gateway's certificate should have been renewed by now.
    RenewalLate,
    /// The gateway's certificate has expired: peers refuse it.
    CertificateExpired,
    /// Certificate files put in place of the gateway's were refused; it keeps its current one.
    RotationRejected,
}

impl ConditionReason {
    pub const ALL: [ConditionReason; 27] = [
        ConditionReason::Accepted,
        ConditionReason::NotProbed,
        ConditionReason::Probed,
        ConditionReason::Unreachable,
        ConditionReason::Listening,
        ConditionReason::PortUnavailable,
        ConditionReason::ServiceReady,
        ConditionReason::HostSet,
        ConditionReason::ServiceFound,
        ConditionReason::ServiceIsImport,
        ConditionReason::ServiceNotFound,
        ConditionReason::ServicePortAmbiguous,
        ConditionReason::Enforced,
        ConditionReason::Invalid,
        ConditionReason::ServiceConflict,
        ConditionReason::TargetPortConflict,
        ConditionReason::NoFreeTargetPort,
        ConditionReason::PeersReachable,
        ConditionReason::NoSuchPeer,
        ConditionReason::PeersUnreachable,
        ConditionReason::ExportNotOffered,
        ConditionReason::CertificateCurrent,
        ConditionReason::ExpiresSoon,
        ConditionReason::RenewalFailing,
        ConditionReason::RenewalLate,
        ConditionReason::CertificateExpired,
        ConditionReason::RotationRejected,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::Accepted => "Accepted",
            ConditionReason::NotProbed => "NotProbed",
            ConditionReason::Probed => "Probed",
            ConditionReason::Unreachable => "Unreachable",
            ConditionReason::Listening => "Listening",
            ConditionReason::PortUnavailable => "PortUnavailable",
            ConditionReason::ServiceReady => "ServiceReady",
            ConditionReason::HostSet => "HostSet",
            ConditionReason::ServiceFound => "ServiceFound",
            ConditionReason::ServiceIsImport => "ServiceIsImport",
            ConditionReason::ServiceNotFound => "ServiceNotFound",
            ConditionReason::ServicePortAmbiguous => "ServicePortAmbiguous",
            ConditionReason::Enforced => "Enforced",
            ConditionReason::Invalid => "Invalid",
            ConditionReason::ServiceConflict => "ServiceConflict",
            ConditionReason::TargetPortConflict => "TargetPortConflict",
            ConditionReason::NoFreeTargetPort => "NoFreeTargetPort",
            ConditionReason::PeersReachable => "PeersReachable",
            ConditionReason::NoSuchPeer => "NoSuchPeer",
            ConditionReason::PeersUnreachable => "PeersUnreachable",
            ConditionReason::ExportNotOffered => "ExportNotOffered",
            ConditionReason::CertificateCurrent => "CertificateCurrent",
            ConditionReason::ExpiresSoon => "ExpiresSoon",
            ConditionReason::RenewalFailing => "RenewalFailing",
            ConditionReason::RenewalLate => "RenewalLate",
            ConditionReason::CertificateExpired => "CertificateExpired",
            ConditionReason::RotationRejected => "RotationRejected",
        }
    }
}

impl fmt::Display for ConditionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes requires a condition type and reason to be a CamelCase word
    /// (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`), and each is told apart by its text.
    #[test]
    fn names_are_distinct_kubernetes_words() {
        let types: Vec<&str> = ConditionType::ALL.iter().map(|t| t.as_str()).collect();
        let reasons: Vec<&str> = ConditionReason::ALL.iter().map(|r| r.as_str()).collect();
        for names in [&types, &reasons] {
            for name in names.iter() {
                assert!(name.starts_with(|c: char| c.is_ascii_uppercase()), "{name}");
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
            }
            let mut unique = names.to_vec();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{names:?}");
        }
    }
}
