//! Small types shared by several kinds.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// API group of every Agentry resource.
pub const GROUP: &str = "agentry.dev";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";
/// Label that ties namespaced objects (and the namespace itself) to their Tenant.
pub const TENANT_LABEL: &str = "agentry.dev/tenant";

/// A reference to one key of a Secret in the same namespace as the referring object
/// (for a Tenant: the operator's namespace, from which the operator projects it).
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where a value comes from when it is not written inline.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// Read the value from a key of a Secret; the value itself never enters the bundle.
    pub secret_key_ref: SecretKeyRef,
}

/// Pattern of a Kubernetes object name that is also a DNS-1123 label.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of a non-negative USD amount written as a decimal string with at most six
/// fractional digits (one micro-dollar), so that it converts exactly to integer micro-units.
pub const USD_DECIMAL: &str = r"^[0-9]{1,9}(\.[0-9]{1,6})?$";

/// Converts a decimal USD string (validated by [`USD_DECIMAL`]) into integer micro-dollars.
/// Returns `None` for anything that is not such a string.
pub fn usd_to_micros(value: &str) -> Option<i64> {
    let (whole, frac) = match value.split_once('.') {
        Some((w, f)) => (w, f),
        None => (value, ""),
    };
    if whole.is_empty()
        || whole.len() > 9
        || frac.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (value.contains('.') && frac.is_empty())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let mut frac_micros: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_micros += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
    }
    Some(whole * 1_000_000 + frac_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_strings_convert_exactly_to_micros() {
        assert_eq!(usd_to_micros("500.00"), Some(500_000_000));
        assert_eq!(usd_to_micros("0.15"), Some(150_000));
        assert_eq!(usd_to_micros("0.000001"), Some(1));
        assert_eq!(usd_to_micros("7"), Some(7_000_000));
        assert_eq!(usd_to_micros("1."), None);
        assert_eq!(usd_to_micros(".5"), None);
        assert_eq!(usd_to_micros("-1"), None);
        assert_eq!(usd_to_micros("1.0000001"), None);
        assert_eq!(usd_to_micros("1e3"), None);
    }
}
