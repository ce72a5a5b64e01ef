//! Install tests: the Helm chart, the kustomize layouts, the Argo CD manifests and the
//! Dockerfile, checked with the real `helm` and `kubectl` and validated offline against the
//! Kubernetes schemas (`kubernetes-validate`) and the agentry.dev CRD schemas. The tools come
//! from `scripts/tools.sh` (`make tools`); without them these tests fail and say so.

// `cfg(test)` marks the modules as test code, where the workspace's clippy settings allow
// unwrap, expect and panic (a test crate's submodules are not recognised as such otherwise).
#[cfg(test)]
mod argocd;
#[cfg(test)]
mod chart;
#[cfg(test)]
mod cluster_files;
#[cfg(test)]
mod dockerfile;
#[cfg(test)]
mod kustomize;
#[cfg(test)]
mod monitoring;
#[cfg(test)]
mod rbac;
#[cfg(test)]
mod schemas;
#[cfg(test)]
mod support;
