//! Drift check: the committed generated files must equal what the types generate.

use std::path::PathBuf;

use agentry_crds::{crdgen, reference};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assert_same(path: PathBuf, expected: &str) {
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is out of date with the Rust types: run `make crds` and commit the result",
        path.display()
    );
}

#[test]
fn committed_crds_match_the_types() {
    let root = repo_root();
    let crds = crdgen::all();
    assert_eq!(crds.len(), 5, "five CRDs");
    for crd in crds {
        let yaml = crdgen::to_yaml(&crd).unwrap();
        assert_same(
            root.join("manifests/crds").join(crdgen::file_name(&crd)),
            &yaml,
        );
        let helm = root.join("helm/agentry/crds");
        if helm.exists() {
            assert_same(helm.join(crdgen::file_name(&crd)), &yaml);
        }
    }
}

#[test]
fn committed_api_reference_matches_the_types() {
    assert_same(repo_root().join("docs/api.md"), &reference::markdown());
}
