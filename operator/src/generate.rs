//! Writes the files generated from the API types.

use std::fs;
use std::path::Path;

use agentry_crds::crdgen;
use anyhow::Context as _;

use crate::cli::GenerateArgs;

/// Writes the CRDs (and their copies) and the API reference.
pub fn write_all(args: &GenerateArgs) -> anyhow::Result<()> {
    for crd in crdgen::all() {
        let yaml = crdgen::to_yaml(&crd)?;
        for dir in std::iter::once(&args.crds_dir).chain(&args.copies) {
            write(&dir.join(crdgen::file_name(&crd)), &yaml)?;
        }
    }
    write(&args.api_doc, &agentry_crds::reference::markdown())?;
    Ok(())
}

fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
