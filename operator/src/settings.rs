//! Operator settings that shape what a Tenant becomes (from `run`'s flags, or built in tests).

use std::collections::BTreeMap;

use thiserror::Error;
use url::Url;

use crate::cli::RunArgs;

/// A flag that cannot be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The administrator URL does not parse.
    #[error("--database-url is not a URL: {0}")]
    Url(#[source] url::ParseError),
    /// A tenant database setting that cannot be put into the URL.
    #[error("{flag}: {value:?} cannot be used: {reason}")]
    TenantDatabase {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// An egress peer that is neither a CIDR nor a namespace name.
    #[error("{flag}: {value:?} is neither a CIDR (10.0.0.0/8) nor a namespace name")]
    Peer {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// An annotation without `=`.
    #[error("--ingress-annotations: {0:?} is not key=value")]
    Annotation(String),
}

/// Where a tenant runtime may connect to (PostgreSQL, NATS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// An IP block.
    Cidr(String),
    /// Every pod of a namespace.
    Namespace(String),
}

/// Egress to one platform service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressTarget {
    /// Destinations; empty means any destination on `port`.
    pub peers: Vec<Peer>,
    /// TCP port.
    pub port: u16,
}

/// Tenant Ingress settings; no Ingress without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressSettings {
    /// IngressClass name.
    pub class: Option<String>,
    /// Hosts are `<tenant>.<base_domain>`.
    pub base_domain: String,
    /// Terminate TLS with the Secret `agentry-runtime-tls`.
    pub tls: bool,
    /// Extra annotations (cert-manager issuer, timeouts for streaming).
    pub annotations: BTreeMap<String, String>,
}

/// Everything the builders need to know about the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Default runtime image.
    pub runtime_image: String,
    /// Its pull policy.
    pub runtime_image_pull_policy: String,
    /// NATS URL for runtimes.
    pub nats_url: String,
    /// Database URL for runtimes, without credentials.
    pub runtime_database_url: Url,
    /// Ingress, when configured.
    pub ingress: Option<IngressSettings>,
    /// Namespaces allowed to reach runtimes.
    pub gateway_namespaces: Vec<String>,
    /// PostgreSQL egress.
    pub postgres: EgressTarget,
    /// NATS egress.
    pub nats: EgressTarget,
    /// The operator's namespace (provider key Secrets, Lease).
    pub operator_namespace: String,
}

impl Settings {
    /// Settings from the `run` flags; `operator_namespace` is where the operator runs.
    pub fn from_args(args: &RunArgs, operator_namespace: &str) -> Result<Self, SettingsError> {
        let runtime_database_url = tenant_database_url(args)?;
        let ingress = match &args.base_domain {
            Some(domain) if !domain.is_empty() => Some(IngressSettings {
                class: args.ingress_class.clone().filter(|c| !c.is_empty()),
                base_domain: domain.trim_matches('.').to_owned(),
                tls: args.ingress_tls,
                annotations: args
                    .ingress_annotations
                    .iter()
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.split_once('=')
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .ok_or_else(|| SettingsError::Annotation(a.clone()))
                    })
                    .collect::<Result<_, _>>()?,
            }),
            _ => None,
        };
        Ok(Self {
            runtime_image: args.runtime_image.clone(),
            runtime_image_pull_policy: args.runtime_image_pull_policy.clone(),
            nats_url: args.nats_url.clone(),
            runtime_database_url,
            ingress,
            gateway_namespaces: args
                .gateway_namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            postgres: EgressTarget {
                peers: parse_peers("--postgres-cidrs", &args.postgres_egress)?,
                port: args.postgres_port,
            },
            nats: EgressTarget {
                peers: parse_peers("--nats-cidrs", &args.nats_egress)?,
                port: args.nats_port,
            },
            operator_namespace: operator_namespace.to_owned(),
        })
    }
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// The URL tenant runtimes connect with: the administrator URL without its credentials
/// (runtimes get their own), with host, port, database and `sslmode` replaced when given.
fn tenant_database_url(args: &RunArgs) -> Result<Url, SettingsError> {
    let mut url = Url::parse(&args.database_url).map_err(SettingsError::Url)?;
    let bad =
        |flag: &'static str, value: &str, reason: &'static str| SettingsError::TenantDatabase {
            flag,
            value: value.to_owned(),
            reason,
        };
    // Both calls fail only for URLs that cannot carry credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if let Some(host) = given(&args.tenant_database_host) {
        url.set_host(Some(host))
            .map_err(|_| bad("--tenant-database-host", host, "not a host name"))?;
    }
    if let Some(port) = given(&args.tenant_database_port) {
        let number: u16 = port
            .parse()
            .map_err(|_| bad("--tenant-database-port", port, "not a port number"))?;
        url.set_port(Some(number))
            .map_err(|()| bad("--tenant-database-port", port, "the URL takes no port"))?;
    }
    if let Some(name) = given(&args.tenant_database_name) {
        if name.contains('/') {
            return Err(bad(
                "--tenant-database-name",
                name,
                "a database name has no '/'",
            ));
        }
        url.set_path(&format!("/{name}"));
    }
    if let Some(mode) = given(&args.tenant_database_sslmode) {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "sslmode")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("sslmode", mode);
    }
    Ok(url)
}

fn parse_peers(flag: &'static str, values: &[String]) -> Result<Vec<Peer>, SettingsError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            parse_peer(v).ok_or_else(|| SettingsError::Peer {
                flag,
                value: v.to_owned(),
            })
        })
        .collect()
}

fn parse_peer(value: &str) -> Option<Peer> {
    if let Some((address, bits)) = value.split_once('/') {
        let bits: u8 = bits.parse().ok()?;
        let ok = match address.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(_) => bits <= 32,
            std::net::IpAddr::V6(_) => bits <= 128,
        };
        return ok.then(|| Peer::Cidr(value.to_owned()));
    }
    let label = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    label.then(|| Peer::Namespace(value.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser as _;

    /// Settings as the scenario and builder tests use them.
    pub(crate) fn settings() -> Settings {
        Settings {
            runtime_image: "registry.example/agentry-runtime:1.2.3".to_owned(),
            runtime_image_pull_policy: "IfNotPresent".to_owned(),
            nats_url: "nats://nats.agentry-system.svc:4222".to_owned(),
            runtime_database_url: Url::parse(
                "postgres://pg.agentry-system.svc:5432/agentry?sslmode=require",
            )
            .unwrap(),
            ingress: None,
            gateway_namespaces: vec!["ingress-nginx".to_owned()],
            postgres: EgressTarget {
                peers: vec![Peer::Namespace("databases".to_owned())],
                port: 5432,
            },
            nats: EgressTarget {
                peers: vec![Peer::Cidr("10.20.0.0/16".to_owned())],
                port: 4222,
            },
            operator_namespace: "agentry-system".to_owned(),
        }
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "agentry-operator",
            "run",
            "--database-url",
            "postgres://admin:s3cret@pg:5432/agentry?sslmode=require",
        ];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(args) => *args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn runtime_database_url_drops_the_administrator_credentials() {
        let s = Settings::from_args(&args(&[]), "agentry-system").unwrap();
        assert_eq!(
            s.runtime_database_url.as_str(),
            "postgres://pg:5432/agentry?sslmode=require"
        );
        assert!(s.ingress.is_none());
        assert!(s.postgres.peers.is_empty());
        assert_eq!(s.gateway_namespaces, ["ingress-nginx"]);
        assert_eq!(s.operator_namespace, "agentry-system");
    }

    #[test]
    fn tenant_database_parts_replace_those_of_the_administrator_url() {
        let s = Settings::from_args(
            &args(&[
                "--tenant-database-host",
                "pg.internal",
                "--tenant-database-port",
                "6432",
                "--tenant-database-name",
                "tenants",
                "--tenant-database-sslmode",
                "verify-full",
            ]),
            "ns",
        )
        .unwrap();
        assert_eq!(
            s.runtime_database_url.as_str(),
            "postgres://pg.internal:6432/tenants?sslmode=verify-full"
        );
        let empty = Settings::from_args(&args(&["--tenant-database-host", ""]), "ns").unwrap();
        assert_eq!(empty.runtime_database_url.host_str(), Some("pg"));
        let e = Settings::from_args(&args(&["--tenant-database-port", "x"]), "ns").unwrap_err();
        assert!(e.to_string().contains("--tenant-database-port"), "{e}");
    }

    #[test]
    fn peers_ingress_and_annotations_parse() {
        let s = Settings::from_args(
            &args(&[
                "--postgres-cidrs",
                "10.0.4.0/24,databases",
                "--nats-cidrs",
                "fd00::/8",
                "--base-domain",
                "agentry.example.com.",
                "--ingress-class",
                "nginx",
                "--ingress-annotations",
                "cert-manager.io/cluster-issuer=letsencrypt",
            ]),
            "ns",
        )
        .unwrap();
        assert_eq!(
            s.postgres.peers,
            [
                Peer::Cidr("10.0.4.0/24".to_owned()),
                Peer::Namespace("databases".to_owned())
            ]
        );
        assert_eq!(s.nats.peers, [Peer::Cidr("fd00::/8".to_owned())]);
        let ingress = s.ingress.unwrap();
        assert_eq!(ingress.base_domain, "agentry.example.com");
        assert_eq!(ingress.class.as_deref(), Some("nginx"));
        assert_eq!(
            ingress
                .annotations
                .get("cert-manager.io/cluster-issuer")
                .map(String::as_str),
            Some("letsencrypt")
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        for bad in ["10.0.0.0/33", "Not_A_Namespace", "300.1.1.1/8"] {
            let e = Settings::from_args(&args(&["--postgres-cidrs", bad]), "ns").unwrap_err();
            assert!(e.to_string().contains("--postgres-cidrs"), "{e}");
        }
        let e = Settings::from_args(
            &args(&["--base-domain", "x.io", "--ingress-annotations", "novalue"]),
            "ns",
        )
        .unwrap_err();
        assert!(e.to_string().contains("key=value"));
    }
}
