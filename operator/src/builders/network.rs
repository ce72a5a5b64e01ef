//! NetworkPolicies of a tenant namespace: deny by default, then allow what the runtime needs.
//!
//! NetworkPolicy matches addresses, not host names, so the tenant's egress allowlist cannot
//! be expressed host by host. When the tenant needs the internet at all (an allowlist entry,
//! an OpenAI-compatible provider, an HTTP or MCP tool), the runtime may reach ports 443 and
//! 80 on public addresses (every private, loopback and link-local range is excepted); which
//! hosts it actually calls, and whether a private address is allowed, is enforced by the
//! runtime's SSRF guard against the allowlist in the bundle.

use std::collections::BTreeMap;

use agentry_crds::RuntimeBundle;
use agentry_crds::tool::ToolType;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, Owner};
use crate::settings::{EgressTarget, Peer, Settings};

/// Names of the policies, in the order they are applied.
pub const POLICY_NAMES: [&str; 5] = [
    "agentry-default-deny",
    "agentry-allow-gateway",
    "agentry-allow-dns",
    "agentry-allow-platform",
    "agentry-allow-internet",
];

/// IPv4 ranges the internet rule never opens.
pub const PRIVATE_V4: [&str; 6] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
];
/// IPv6 ranges the internet rule never opens.
pub const PRIVATE_V6: [&str; 3] = ["::1/128", "fc00::/7", "fe80::/10"];

/// Label every namespace carries with its own name (Kubernetes sets it).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether the tenant's runtime needs to reach the internet.
pub fn needs_internet(bundle: &RuntimeBundle) -> bool {
    !bundle.tenant.egress_allowlist.is_empty()
        || bundle
            .tenant
            .providers
            .values()
            .any(|p| p.base_url.is_some())
        || bundle
            .tools
            .values()
            .any(|t| matches!(t.type_, ToolType::Http | ToolType::Mcp))
}

/// Every NetworkPolicy of the tenant namespace.
pub fn policies(owner: &Owner, settings: &Settings, bundle: &RuntimeBundle) -> Vec<NetworkPolicy> {
    vec![
        default_deny(owner),
        allow_gateway(owner, &settings.gateway_namespaces),
        allow_dns(owner),
        allow_platform(owner, settings),
        allow_internet(owner, needs_internet(bundle)),
    ]
}

fn policy(owner: &Owner, name: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owner.meta(name),
        spec: Some(spec),
    }
}

fn select(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

fn namespace_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(select(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            namespace.to_owned(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

fn cidr_peer(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: (!except.is_empty()).then(|| except.iter().map(|s| (*s).to_owned()).collect()),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(number)),
        end_port: None,
    }
}

/// Selects every pod and allows nothing: what the other policies do not open stays shut.
fn default_deny(owner: &Owner) -> NetworkPolicy {
    policy(
        owner,
        POLICY_NAMES[0],
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ..NetworkPolicySpec::default()
        },
    )
}

/// The platform gateway (ingress controller) reaches the runtime's HTTP port.
fn allow_gateway(owner: &Owner, gateway_namespaces: &[String]) -> NetworkPolicy {
    // With no gateway namespace there is no rule at all: a rule without peers would admit
    // every source.
    let ingress = if gateway_namespaces.is_empty() {
        vec![]
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(
                gateway_namespaces
                    .iter()
                    .map(|n| namespace_peer(n))
                    .collect(),
            ),
            ports: Some(vec![port("TCP", HTTP_PORT)]),
        }]
    };
    policy(
        owner,
        POLICY_NAMES[1],
        NetworkPolicySpec {
            pod_selector: Some(select(owner.selector())),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        },
    )
}

/// Every pod may resolve names through kube-dns.
fn allow_dns(owner: &Owner) -> NetworkPolicy {
    let peer = NetworkPolicyPeer {
        namespace_selector: Some(select(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            "kube-system".to_owned(),
        )]))),
        pod_selector: Some(select(BTreeMap::from([(
            "k8s-app".to_owned(),
            "kube-dns".to_owned(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    policy(
        owner,
        POLICY_NAMES[2],
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![peer]),
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            }]),
            ..NetworkPolicySpec::default()
        },
    )
}

fn egress_rule(target: &EgressTarget) -> NetworkPolicyEgressRule {
    let to: Vec<NetworkPolicyPeer> = target
        .peers
        .iter()
        .map(|peer| match peer {
            Peer::Cidr(cidr) => cidr_peer(cidr, &[]),
            Peer::Namespace(ns) => namespace_peer(ns),
        })
        .collect();
    NetworkPolicyEgressRule {
        // No peers: the port to any destination (the operator was not told where).
        to: (!to.is_empty()).then_some(to),
        ports: Some(vec![port("TCP", i32::from(target.port))]),
    }
}

/// The runtime reaches PostgreSQL and NATS.
fn allow_platform(owner: &Owner, settings: &Settings) -> NetworkPolicy {
    policy(
        owner,
        POLICY_NAMES[3],
        NetworkPolicySpec {
            pod_selector: Some(select(owner.selector())),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(vec![
                egress_rule(&settings.postgres),
                egress_rule(&settings.nats),
            ]),
            ..NetworkPolicySpec::default()
        },
    )
}

/// Ports 443 and 80 on public addresses, when the tenant needs the internet. The policy
/// exists either way (with no rule it opens nothing) so that it never has to be deleted.
fn allow_internet(owner: &Owner, open: bool) -> NetworkPolicy {
    let egress = if open {
        vec![NetworkPolicyEgressRule {
            to: Some(vec![
                cidr_peer("0.0.0.0/0", &PRIVATE_V4),
                cidr_peer("::/0", &PRIVATE_V6),
            ]),
            ports: Some(vec![port("TCP", 443), port("TCP", 80)]),
        }]
    } else {
        vec![]
    };
    policy(
        owner,
        POLICY_NAMES[4],
        NetworkPolicySpec {
            pod_selector: Some(select(owner.selector())),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(egress),
            ..NetworkPolicySpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{bundle, full_tenant, tenant};
    use crate::settings::tests::settings;

    fn by_name(policies: &[NetworkPolicy], name: &str) -> NetworkPolicySpec {
        policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.spec.clone())
            .unwrap()
    }

    #[test]
    fn default_deny_selects_every_pod_both_ways() {
        let t = tenant();
        let ps = policies(&Owner::of(&t), &settings(), &bundle(&t));
        let names: Vec<_> = ps
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, POLICY_NAMES);
        let deny = by_name(&ps, "agentry-default-deny");
        assert_eq!(deny.pod_selector, Some(LabelSelector::default()));
        assert_eq!(deny.policy_types.unwrap(), ["Ingress", "Egress"]);
        assert!(deny.ingress.is_none() && deny.egress.is_none());
    }

    #[test]
    fn gateway_reaches_only_the_runtime_port() {
        let t = tenant();
        let ps = policies(&Owner::of(&t), &settings(), &bundle(&t));
        let gw = by_name(&ps, "agentry-allow-gateway");
        let rule = &gw.ingress.unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(
            from[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_NAME_LABEL],
            "ingress-nginx"
        );
        assert_eq!(rule.ports.as_ref().unwrap()[0], port("TCP", 8080));
        assert_eq!(
            gw.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "acme"
        );

        let mut no_gateway = settings();
        no_gateway.gateway_namespaces.clear();
        let ps = policies(&Owner::of(&t), &no_gateway, &bundle(&t));
        assert_eq!(by_name(&ps, "agentry-allow-gateway").ingress, Some(vec![]));
    }

    #[test]
    fn dns_postgres_and_nats_are_open_as_configured() {
        let t = tenant();
        let ps = policies(&Owner::of(&t), &settings(), &bundle(&t));
        let dns = &by_name(&ps, "agentry-allow-dns").egress.unwrap()[0];
        assert_eq!(
            dns.ports.clone().unwrap(),
            [port("UDP", 53), port("TCP", 53)]
        );
        let peer = &dns.to.as_ref().unwrap()[0];
        assert_eq!(
            peer.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["k8s-app"],
            "kube-dns"
        );

        let platform = by_name(&ps, "agentry-allow-platform").egress.unwrap();
        assert_eq!(platform[0].ports.clone().unwrap(), [port("TCP", 5432)]);
        assert!(
            platform[0].to.as_ref().unwrap()[0]
                .namespace_selector
                .is_some()
        );
        assert_eq!(platform[1].ports.clone().unwrap(), [port("TCP", 4222)]);
        assert_eq!(
            platform[1].to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "10.20.0.0/16"
        );

        let mut anywhere = settings();
        anywhere.postgres.peers.clear();
        let ps = policies(&Owner::of(&t), &anywhere, &bundle(&t));
        assert!(
            by_name(&ps, "agentry-allow-platform").egress.unwrap()[0]
                .to
                .is_none()
        );
    }

    #[test]
    fn internet_opens_only_when_needed_and_never_private_ranges() {
        let t = tenant();
        let ps = policies(&Owner::of(&t), &settings(), &bundle(&t));
        assert_eq!(by_name(&ps, "agentry-allow-internet").egress, Some(vec![]));

        let full = full_tenant();
        let ps = policies(&Owner::of(&full), &settings(), &bundle(&full));
        let rule = &by_name(&ps, "agentry-allow-internet").egress.unwrap()[0];
        assert_eq!(
            rule.ports.clone().unwrap(),
            [port("TCP", 443), port("TCP", 80)]
        );
        let v4 = rule.to.as_ref().unwrap()[0].ip_block.clone().unwrap();
        assert_eq!(v4.cidr, "0.0.0.0/0");
        let except = v4.except.unwrap();
        for private in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
        ] {
            assert!(except.iter().any(|e| e == private), "{private}");
        }
        let v6 = rule.to.as_ref().unwrap()[1].ip_block.clone().unwrap();
        assert_eq!(v6.cidr, "::/0");
    }

    #[test]
    fn an_openai_provider_alone_needs_the_internet() {
        let mut t = full_tenant();
        t.spec.network = None;
        assert!(needs_internet(&bundle(&t)));
        assert!(!needs_internet(&bundle(&tenant())));
    }
}
