//! When a gateway's own certificate needs attention: the `CertificateValid` condition, which the
//! management API reports and `gwctl check` shows. One rule for both.

use clusterlink_api::{Condition, ConditionReason, ConditionStatus, ConditionType};
use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

/// A certificate that does not renew itself is a warning this long before its end: time to
/// rotate it.
pub const EXPIRY_WARNING_SECONDS: i64 = 30 * 86_400;

/// What a gateway knows of its own certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Unix seconds.
    pub expires: Option<i64>,
    pub valid_from: Option<i64>,
    /// The issuing gateway it renews with, if it renews itself.
    pub renews_from: Option<String>,
    /// When it last renewed (Unix seconds).
    pub renewed: Option<i64>,
    /// Why the last renewal failed, if it did.
    pub renewal_failure: Option<String>,
    /// Why certificate files put in place of the current ones were refused, while they are.
    pub rotation_rejected: Option<String>,
}

/// A Unix time as an operator reads it.
pub fn timestamp(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

/// A span of seconds as an operator reads it: `12 days`, `5h 20m`, `4m 10s`, `40s`.
pub fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl CertificateStatus {
    /// The condition at `now` (Unix seconds). `True` while peers accept the certificate (with a
    /// reason that asks for attention when it ends soon or renewal is failing or late), `False`
    /// once it has expired, `Unknown` if its dates are not known.
    pub fn condition(&self, now: i64) -> Condition {
        let condition = |status, reason, message: String| {
            Condition::new(ConditionType::CertificateValid, status, reason, message)
        };
        let Some(expires) = self.expires else {
            return condition(
                ConditionStatus::Unknown,
                ConditionReason::CertificateCurrent,
                "the gateway does not say when its certificate expires".into(),
            );
        };
        let date = timestamp(expires);
        if expires <= now {
            return condition(
                ConditionStatus::False,
                ConditionReason::CertificateExpired,
                format!(
                    "expired at {date}: peers refuse it; issue a new one, or join again with a token"
                ),
            );
        }
        let left = span(expires - now);
        if let Some(why) = &self.rotation_rejected {
            return condition(
                ConditionStatus::True,
                ConditionReason::RotationRejected,
                format!(
                    "the certificate files on disk were not put in force ({why}); the gateway \
                     still uses the one that expires in {left} ({date}); put back valid files"
                ),
            );
        }
        let Some(issuer) = &self.renews_from else {
            return if expires - now < EXPIRY_WARNING_SECONDS {
                condition(
                    ConditionStatus::True,
                    ConditionReason::ExpiresSoon,
                    format!(
                        "expires in {left} ({date}): rotate it soon, or join with a token so that it renews itself"
                    ),
                )
            } else {
                condition(
                    ConditionStatus::True,
                    ConditionReason::CertificateCurrent,
                    format!("expires in {left} ({date})"),
                )
            };
        };
        let renewed = self.renewed.map_or_else(
            || "not renewed yet".to_string(),
            |at| format!("last renewed {} ago", span(now - at)),
        );
        if let Some(failure) = &self.renewal_failure {
            return condition(
                ConditionStatus::True,
                ConditionReason::RenewalFailing,
                format!(
                    "renewal with {issuer} is failing ({failure}); expires in {left} ({date}); {renewed}"
                ),
            );
        }
        // Renewal starts at two thirds of the lifetime; past three quarters it is late.
        let late = self
            .valid_from
            .is_some_and(|from| now > from + (expires - from) * 3 / 4);
        if late {
            condition(
                ConditionStatus::True,
                ConditionReason::RenewalLate,
                format!(
                    "expires in {left} ({date}) and should have been renewed with {issuer} by now; {renewed}"
                ),
            )
        } else {
            condition(
                ConditionStatus::True,
                ConditionReason::CertificateCurrent,
                format!("expires in {left} ({date}); renews itself with {issuer}; {renewed}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reason(status: &CertificateStatus, now: i64) -> String {
        status.condition(now).reason
    }

    #[test]
    fn certificates_near_their_end_ask_for_attention_and_expired_ones_fail() {
        let day = 86_400;
        let expiring = |expires| CertificateStatus {
            expires,
            ..CertificateStatus::default()
        };
        assert_eq!(reason(&expiring(Some(365 * day)), 0), "CertificateCurrent");
        assert_eq!(reason(&expiring(Some(10 * day)), 0), "ExpiresSoon");
        let expired = expiring(Some(-day)).condition(0);
        assert_eq!(
            (expired.status, expired.reason.as_str()),
            (ConditionStatus::False, "CertificateExpired")
        );
        assert_eq!(expiring(None).condition(0).status, ConditionStatus::Unknown);
    }

    #[test]
    fn a_renewing_certificate_asks_for_attention_only_when_renewal_fails_or_is_late() {
        let renewing = |failure: Option<&str>| CertificateStatus {
            expires: Some(120),
            valid_from: Some(0),
            renews_from: Some("hub".into()),
            renewed: None,
            renewal_failure: failure.map(str::to_string),
            rotation_rejected: None,
        };
        // A two-minute certificate is current while it renews itself.
        let fine = renewing(None).condition(10);
        assert_eq!(fine.reason, "CertificateCurrent", "{}", fine.message);
        assert!(fine.message.contains("renews itself with hub"));
        assert_eq!(reason(&renewing(None), 100), "RenewalLate");
        let failing = renewing(Some("no issuing gateway answered")).condition(10);
        assert_eq!(failing.reason, "RenewalFailing");
        assert!(failing.message.contains("no issuing gateway answered"));
        assert_eq!(reason(&renewing(None), 121), "CertificateExpired");
    }

    #[test]
    fn refused_certificate_files_ask_for_attention_until_valid_ones_are_back() {
        let refused = CertificateStatus {
            expires: Some(365 * 86_400),
            rotation_rejected: Some("the certificate does not fit the CA".into()),
            ..CertificateStatus::default()
        };
        let condition = refused.condition(0);
        assert_eq!(condition.reason, "RotationRejected");
        assert_eq!(
            condition.status,
            ConditionStatus::True,
            "the old one still serves"
        );
        assert!(
            condition.message.contains("does not fit the CA"),
            "{}",
            condition.message
        );
        // Expiry outranks it: an expired certificate is the failure to fix first.
        assert_eq!(reason(&refused, 366 * 86_400), "CertificateExpired");
    }
}
