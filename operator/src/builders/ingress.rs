//! The tenant's Ingress: `<tenant>.<base domain>` to the runtime Service.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::{Owner, RUNTIME, SERVICE_PORT};
use crate::settings::IngressSettings;

/// Secret holding the Ingress certificate when TLS is on.
pub const TLS_SECRET: &str = "agentry-runtime-tls";

/// Host name of the tenant.
pub fn host(owner: &Owner, settings: &IngressSettings) -> String {
    format!("{}.{}", owner.name, settings.base_domain)
}

/// URL of the tenant behind the Ingress.
pub fn endpoint(owner: &Owner, settings: &IngressSettings) -> String {
    let scheme = if settings.tls { "https" } else { "http" };
    format!("{scheme}://{}", host(owner, settings))
}

/// The Ingress.
pub fn ingress(owner: &Owner, settings: &IngressSettings) -> Ingress {
    let host = host(owner, settings);
    let mut meta = owner.meta(RUNTIME);
    if !settings.annotations.is_empty() {
        meta.annotations = Some(settings.annotations.clone());
    }
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: settings.class.clone(),
            tls: settings.tls.then(|| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(TLS_SECRET.to_owned()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: RUNTIME.to_owned(),
                                port: Some(ServiceBackendPort {
                                    number: Some(SERVICE_PORT),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::builders::fixtures::tenant;

    fn settings(tls: bool) -> IngressSettings {
        IngressSettings {
            class: Some("nginx".to_owned()),
            base_domain: "agentry.example.com".to_owned(),
            tls,
            annotations: BTreeMap::from([(
                "cert-manager.io/cluster-issuer".to_owned(),
                "letsencrypt".to_owned(),
            )]),
        }
    }

    #[test]
    fn ingress_routes_the_tenant_host_to_the_service() {
        let owner = Owner::of(&tenant());
        let i = ingress(&owner, &settings(false));
        assert_eq!(
            i.metadata.annotations.clone().unwrap()["cert-manager.io/cluster-issuer"],
            "letsencrypt"
        );
        let spec = i.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert!(spec.tls.is_none());
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("acme.agentry.example.com"));
        let backend = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(backend.name, RUNTIME);
        assert_eq!(backend.port.unwrap().number, Some(SERVICE_PORT));
        assert_eq!(
            endpoint(&owner, &settings(false)),
            "http://acme.agentry.example.com"
        );
    }

    #[test]
    fn tls_names_the_host_and_secret() {
        let owner = Owner::of(&tenant());
        let tls = ingress(&owner, &settings(true)).spec.unwrap().tls.unwrap();
        assert_eq!(tls[0].hosts.clone().unwrap(), ["acme.agentry.example.com"]);
        assert_eq!(tls[0].secret_name.as_deref(), Some(TLS_SECRET));
        assert_eq!(
            endpoint(&owner, &settings(true)),
            "https://acme.agentry.example.com"
        );
    }
}
