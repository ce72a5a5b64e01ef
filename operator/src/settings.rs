//! Operator settings that shape what a Tenant becomes (from `run`'s flags, or built in tests).

use std::collections::BTreeMap;

use thiserror::Error;
use url::Url;

use crate::cli::RunArgs;

/// A flag that cannot be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// A URL that does not parse.
    #[error("{flag}: {value:?} is not a URL: {source}")]
    Url {
        /// The flag.
        flag: &'static str,
        /// What was given (credentials removed).
        value: String,
        /// Why.
        #[source]
        source: url::ParseError,
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
    /// Settings from the `run` flags.
    pub fn from_args(args: &RunArgs) -> Result<Self, SettingsError> {
        let runtime_database_url = match &args.runtime_database_url {
            Some(url) => parse_url("--runtime-database-url", url)?,
            None => parse_url("--database-url", &args.database_url)?,
        };
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
                peers: parse_peers("--postgres-egress", &args.postgres_egress)?,
                port: args.postgres_port,
            },
            nats: EgressTarget {
                peers: parse_peers("--nats-egress", &args.nats_egress)?,
                port: args.nats_port,
            },
            operator_namespace: args.operator_namespace.clone(),
        })
    }
}

/// Parses a URL and drops its credentials: runtimes get their own.
fn parse_url(flag: &'static str, value: &str) -> Result<Url, SettingsError> {
    let mut url = Url::parse(value).map_err(|source| SettingsError::Url {
        flag,
        value: value.split('@').next_back().unwrap_or_default().to_owned(),
        source,
    })?;
    // Both calls fail only for URLs that cannot carry credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
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
        let s = Settings::from_args(&args(&[])).unwrap();
        assert_eq!(
            s.runtime_database_url.as_str(),
            "postgres://pg:5432/agentry?sslmode=require"
        );
        assert!(s.ingress.is_none());
        assert!(s.postgres.peers.is_empty());
        assert_eq!(s.gateway_namespaces, ["ingress-nginx"]);
    }

    #[test]
    fn peers_ingress_and_annotations_parse() {
        let s = Settings::from_args(&args(&[
            "--postgres-egress",
            "10.0.4.0/24,databases",
            "--nats-egress",
            "fd00::/8",
            "--base-domain",
            "agentry.example.com.",
            "--ingress-class",
            "nginx",
            "--ingress-annotations",
            "cert-manager.io/cluster-issuer=letsencrypt",
        ]))
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
            let e = Settings::from_args(&args(&["--postgres-egress", bad])).unwrap_err();
            assert!(e.to_string().contains("--postgres-egress"), "{e}");
        }
        let e = Settings::from_args(&args(&[
            "--base-domain",
            "x.io",
            "--ingress-annotations",
            "novalue",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("key=value"));
    }
}
