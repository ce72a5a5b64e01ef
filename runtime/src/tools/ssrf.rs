//! Egress control for tool calls: which URLs a tool may reach.
//!
//! A model chooses tool arguments, and arguments flow into URLs, so a tool call is a request
//! an untrusted party shapes. Without these checks a model (or a prompt injected into it) could
//! make the runtime fetch the cloud metadata service, the Kubernetes API or a database on the
//! pod network. The rules: only `http`/`https`, no credentials in the URL, and every address a
//! host resolves to must be publicly routable unless the tenant's egress allowlist names the
//! host. The check runs inside the HTTP client's DNS step ([`VettingResolver`]), so the address
//! that was checked is the address connected to (no DNS rebinding window), and it runs again for
//! every redirect because each hop is a new request through the same client.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Host names of cloud metadata services, refused by name before any lookup.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Why an address is not publicly routable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16.
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10 (carrier-grade NAT, also used by some clusters for pods).
    SharedCgnat,
    /// fc00::/7 (and the deprecated site-local fec0::/10).
    UniqueLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// A cloud provider's instance metadata endpoint.
    CloudMetadata,
    /// Documentation, benchmarking, protocol-assignment and reserved ranges.
    Reserved,
}

impl AddressClass {
    /// Whether tools may reach the address without an allowlist entry.
    pub fn is_public(self) -> bool {
        self == Self::Public
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Public => "public",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::UniqueLocal => "unique-local",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::CloudMetadata => "cloud metadata",
            Self::Reserved => "reserved",
        })
    }
}

/// Classifies one address. IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64,
/// 6to4) are judged by the embedded address, because that is where the packets end up.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    // Metadata first: these sit inside ranges that would otherwise get a vaguer name.
    if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] || o == [192, 0, 0, 192] {
        return AddressClass::CloudMetadata;
    }
    match o {
        [0, ..] => AddressClass::Unspecified,
        [127, ..] => AddressClass::Loopback,
        [10, ..] => AddressClass::Private,
        [172, b, ..] if (16..=31).contains(&b) => AddressClass::Private,
        [192, 168, ..] => AddressClass::Private,
        [169, 254, ..] => AddressClass::LinkLocal,
        [100, b, ..] if (64..=127).contains(&b) => AddressClass::SharedCgnat,
        [255, 255, 255, 255] => AddressClass::Broadcast,
        [a, ..] if (224..=239).contains(&a) => AddressClass::Multicast,
        [a, ..] if a >= 240 => AddressClass::Reserved,
        [192, 0, 0, _] | [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => {
            AddressClass::Reserved
        }
        [198, b, ..] if b == 18 || b == 19 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return AddressClass::CloudMetadata;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        x if x & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        x if x & 0xffc0 == 0xfec0 => AddressClass::UniqueLocal,
        x if x & 0xff00 == 0xff00 => AddressClass::Multicast,
        // 2001:db8::/32 documentation, 100::/64 discard.
        0x2001 if s[1] == 0x0db8 => AddressClass::Reserved,
        0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,
        // Everything else outside 2000::/3 is unassigned.
        x if x & 0xe000 != 0x2000 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// The IPv4 address an IPv6 address forwards to, for the transition forms.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        // 64:ff9b::/96 (NAT64 well-known prefix) and 64:ff9b:1::/48 (local-use NAT64).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(low),
        // 2002:AABB:CCDD::/48 (6to4).
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// A request the egress rules refuse. The message names the host and the kind of address but
/// not the address itself, so a model probing names learns nothing about the internal network.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// Not http or https.
    #[error("only http and https URLs may be called, not {scheme}:")]
    Scheme {
        /// The refused scheme.
        scheme: String,
    },
    /// `user:password@` in the URL.
    #[error("URLs with credentials are not allowed")]
    Credentials,
    /// No host, or one that cannot be parsed.
    #[error("the URL has no usable host")]
    NoHost,
    /// The host is a cloud metadata name.
    #[error(
        "{host} is a cloud metadata endpoint, which tools may not reach unless the tenant's egress allowlist names it"
    )]
    MetadataHost {
        /// Host as written.
        host: String,
    },
    /// The host is or resolves to an address that is not public.
    #[error(
        "{host} resolves to a {class} address, which tools may not reach unless the tenant's egress allowlist names the host"
    )]
    Blocked {
        /// Host as written.
        host: String,
        /// What kind of address it resolved to.
        class: AddressClass,
    },
}

/// Hosts a tool may reach even on non-public addresses: exact names, or `*.suffix` entries
/// that match any name below the suffix (not the suffix itself).
#[derive(Clone, Debug, Default)]
pub struct EgressAllowlist {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl EgressAllowlist {
    /// Builds the list from bundle entries.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Self {
        let mut list = Self::default();
        for entry in entries {
            let entry = normalize_host(entry.as_ref());
            if let Some(suffix) = entry.strip_prefix("*.") {
                list.suffixes.push(format!(".{suffix}"));
            } else if !entry.is_empty() {
                list.exact.push(entry);
            }
        }
        list
    }

    /// Whether `host` (a URL host, a DNS name or an IP literal) is named by the list.
    pub fn allows(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s))
    }
}

/// Lower-case, without IPv6 brackets or a trailing root dot.
fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// Checks what can be checked without DNS: scheme, credentials, IP-literal hosts (the HTTP
/// client never asks the resolver about those) and metadata names. Names are checked by
/// [`VettingResolver`] when the client connects.
pub fn check_url(url: &Url, allow: &EgressAllowlist) -> Result<(), EgressError> {
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(EgressError::Scheme {
            scheme: scheme.to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::Credentials);
    }
    let host = url.host_str().ok_or(EgressError::NoHost)?;
    if allow.allows(host) {
        return Ok(());
    }
    let bare = normalize_host(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let class = classify(ip);
        if !class.is_public() {
            return Err(EgressError::Blocked {
                host: host.to_owned(),
                class,
            });
        }
        return Ok(());
    }
    check_name(&bare)
}

fn check_name(host: &str) -> Result<(), EgressError> {
    if METADATA_HOSTS.contains(&host) {
        return Err(EgressError::MetadataHost {
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// Checks resolved addresses: every one must be public, because the client may connect to any
/// of them.
pub fn check_addrs(
    host: &str,
    addrs: &[SocketAddr],
    allow: &EgressAllowlist,
) -> Result<(), EgressError> {
    if allow.allows(host) {
        return Ok(());
    }
    for addr in addrs {
        let class = classify(addr.ip());
        if !class.is_public() {
            return Err(EgressError::Blocked {
                host: host.to_owned(),
                class,
            });
        }
    }
    Ok(())
}

/// The HTTP client's DNS step: resolves with the system resolver, then refuses the whole
/// answer if any address is not public (unless the allowlist names the host). The client
/// connects only to the addresses returned here.
#[derive(Clone, Debug)]
pub struct VettingResolver {
    allow: Arc<EgressAllowlist>,
}

impl VettingResolver {
    /// A resolver applying `allow`.
    pub fn new(allow: Arc<EgressAllowlist>) -> Self {
        Self { allow }
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let bare = normalize_host(&host);
            if !allow.allows(&bare) {
                check_name(&bare)?;
            }
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((bare.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} has no addresses"),
                )
                .into());
            }
            check_addrs(&bare, &addrs, &allow)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds an [`EgressError`] in an error's source chain (the HTTP client wraps the resolver's
/// error in its own connect error).
pub fn find_egress_error(err: &(dyn std::error::Error + 'static)) -> Option<EgressError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<EgressError>() {
            return Some(found.clone());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_the_address_table() {
        use AddressClass::*;
        let table = [
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("93.184.216.34", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.168.1.1", Private),
            ("169.254.0.1", LinkLocal),
            ("169.254.169.254", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
            ("192.0.0.192", CloudMetadata),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.10", Reserved),
            ("198.18.0.1", Reserved),
            ("203.0.113.5", Reserved),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fec0::1", UniqueLocal),
            ("fd00:ec2::254", CloudMetadata),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001:80b::200e", Public),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", CloudMetadata),
            ("64:ff9b::808:808", Public),
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::1", Private),
        ];
        for (addr, want) in table {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn allowlist_matches_exact_names_and_suffixes() {
        let allow = EgressAllowlist::new(&["Orders.Internal", "*.svc.cluster.local", "::1"]);
        assert!(allow.allows("orders.internal"));
        assert!(allow.allows("ORDERS.internal."));
        assert!(allow.allows("api.ns.svc.cluster.local"));
        assert!(!allow.allows("svc.cluster.local"));
        assert!(!allow.allows("evil-svc.cluster.local"));
        assert!(!allow.allows("orders.internal.evil.com"));
        assert!(allow.allows("[::1]"));
        assert!(!allow.allows("127.0.0.1"));
    }

    #[test]
    fn url_checks_refuse_schemes_credentials_literals_and_metadata_names() {
        let none = EgressAllowlist::default();
        let check = |u: &str| check_url(&Url::parse(u).unwrap(), &none);
        assert!(check("https://api.example.com/x").is_ok());
        assert!(matches!(
            check("ftp://example.com/"),
            Err(EgressError::Scheme { .. })
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(EgressError::Scheme { .. })
        ));
        assert_eq!(
            check("https://user:pw@example.com/"),
            Err(EgressError::Credentials)
        );
        assert!(matches!(
            check("http://127.0.0.1:8080/"),
            Err(EgressError::Blocked {
                class: AddressClass::Loopback,
                ..
            })
        ));
        // The URL parser normalizes odd IPv4 spellings before the check sees them.
        assert!(matches!(
            check("http://0x7f.1/"),
            Err(EgressError::Blocked {
                class: AddressClass::Loopback,
                ..
            })
        ));
        assert!(matches!(
            check("http://2130706433/"),
            Err(EgressError::Blocked { .. })
        ));
        assert!(matches!(
            check("http://[::ffff:169.254.169.254]/latest"),
            Err(EgressError::Blocked {
                class: AddressClass::CloudMetadata,
                ..
            })
        ));
        assert!(matches!(
            check("http://metadata.google.internal/computeMetadata/v1/"),
            Err(EgressError::MetadataHost { .. })
        ));
        let allow = EgressAllowlist::new(&["127.0.0.1"]);
        assert!(check_url(&Url::parse("http://127.0.0.1:9/").unwrap(), &allow).is_ok());
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let none = EgressAllowlist::default();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:443".parse().unwrap();
        assert!(check_addrs("a.example", &[public], &none).is_ok());
        assert!(check_addrs("a.example", &[public, private], &none).is_err());
        let allow = EgressAllowlist::new(&["*.example"]);
        assert!(check_addrs("a.example", &[public, private], &allow).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_and_reports_through_the_chain() {
        let resolver = VettingResolver::new(Arc::new(EgressAllowlist::default()));
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        let found = find_egress_error(err.as_ref()).unwrap();
        assert!(matches!(
            found,
            EgressError::Blocked {
                class: AddressClass::Loopback,
                ..
            }
        ));
        let allowed = VettingResolver::new(Arc::new(EgressAllowlist::new(&["localhost"])));
        let addrs: Vec<_> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
    }
}
