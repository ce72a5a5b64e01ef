//! The Dockerfile cannot be built here (no container engine), so it is read: a multi-stage
//! build of both binaries into a small image that runs as a non-root user.

use crate::support;

/// The instructions of one stage: (keyword, arguments), continuation lines joined.
fn stages(dockerfile: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut logical = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            logical.push_str(part);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let (keyword, args) = logical.split_once(' ').unwrap_or((&logical, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push((keyword, args.trim().to_owned()));
        logical.clear();
    }
    stages
}

fn args<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn dockerfile_builds_both_binaries_into_a_non_root_image() {
    let root = support::root();
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let stages = stages(&text);
    assert!(stages.len() >= 2, "a multi-stage build");
    let builder = &stages[0];
    let from = args(builder, "FROM")[0];
    let cargo_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .unwrap();
    assert!(
        from.starts_with(&format!("rust:{rust_version}")),
        "the builder uses the workspace's rust-version {rust_version}: {from}"
    );
    let builder_name = from
        .rsplit_once(" AS ")
        .or(from.rsplit_once(" as "))
        .unwrap()
        .1;
    let build = args(builder, "RUN").join(" ");
    for needed in [
        "cargo build --profile dist",
        "--locked",
        "-p agentry-operator",
        "-p agentry-runtime",
        "target/dist/agentry-operator",
    ] {
        assert!(
            build.contains(needed),
            "the build lacks `{needed}`: {build}"
        );
    }
    // The profile the operator benchmark measures (scripts/bench-operator.sh).
    assert!(
        cargo_toml.contains("[profile.dist]"),
        "Cargo.toml defines the dist profile the image is built with"
    );
    let bench = std::fs::read_to_string(root.join("scripts/bench-operator.sh")).unwrap();
    assert!(
        bench.contains("--profile dist"),
        "the operator benchmark measures the profile the image ships"
    );

    let last = stages.last().unwrap();
    let base = args(last, "FROM")[0];
    assert!(
        !base.contains("rust:"),
        "the final image must not carry the toolchain"
    );
    let copies = args(last, "COPY").join(" ");
    assert!(copies.contains(&format!("--from={builder_name}")));
    for binary in ["agentry-operator", "agentry-runtime"] {
        assert!(
            copies.contains(binary),
            "{binary} is not copied into the image"
        );
    }
    assert!(
        copies.contains("/usr/local/bin"),
        "the chart runs the binaries by name, from PATH"
    );
    // The last USER wins and must come after the files are in place; numeric, so that the
    // kubelet can check runAsNonRoot.
    let user_at = last.iter().rposition(|(k, _)| k == "USER").expect("a USER");
    let copy_at = last.iter().rposition(|(k, _)| k == "COPY").unwrap();
    assert!(user_at > copy_at);
    let user = &last[user_at].1;
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the image runs as root");
    let chart_uid =
        support::read_documents(&support::chart().join("values.yaml"))[0]["securityContext"]["pod"]
            ["runAsUser"]
            .as_u64()
            .unwrap();
    assert_eq!(
        u64::from(uid),
        chart_uid,
        "the chart's runAsUser is the image's user"
    );
    for (_, from) in stages
        .iter()
        .flat_map(|s| s.iter().filter(|(k, _)| k == "FROM"))
    {
        assert!(!from.contains(":latest"), "pinned base images: {from}");
    }

    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for excluded in [".git", "target", ".tools"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore lacks {excluded}"
        );
    }
}
