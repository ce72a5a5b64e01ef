//! Compiles a folder of YAML and prints each tenant's diagnostics and bundle hash.
//! `cargo run -p agentry-crds --example compile -- manifests/examples`

use std::fs;

use agentry_crds::bundle::{compile, group_by_tenant, parse_documents};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "manifests/examples".to_owned());
    let mut resources = Vec::new();
    let mut paths: Vec<_> = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    {
        let (parsed, errors) = parse_documents(&fs::read_to_string(path)?);
        for e in errors {
            println!("{}: {e}", path.display());
        }
        resources.extend(parsed);
    }
    let (tenants, diagnostics) = group_by_tenant(resources);
    for d in diagnostics {
        println!("{d}");
    }
    for sources in tenants {
        let c = compile(&sources);
        println!(
            "tenant {}: {} agents, {} tools, {} workflows, {} flags, hash {}",
            c.bundle.tenant.name,
            c.bundle.agents.len(),
            c.bundle.tools.len(),
            c.bundle.workflows.len(),
            c.bundle.flags.len(),
            c.bundle.hash
        );
        for d in &c.diagnostics {
            println!("  {d}");
        }
    }
    Ok(())
}
