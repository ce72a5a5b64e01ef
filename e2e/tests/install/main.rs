//! Install tests: the Helm chart, the kustomize layouts, the Argo CD manifests and the
//! Dockerfile, checked with the real `helm` and `kubectl` and validated offline against the
//! Kubernetes schemas (`kubernetes-validate`) and the agentry.dev CRD schemas. The tools come
//! from `scripts/tools.sh` (`make tools`); without them these tests fail and say so.

mod argocd;
mod chart;
mod dockerfile;
mod kustomize;
mod monitoring;
mod rbac;
mod schemas;
mod support;
