//! The policy bundle: the catalog and every `*.cedar` file, read from disk, validated, indexed,
//! and versioned by the hash of their sources.

use std::path::Path;

use airlock_core::catalog::{Catalog, CatalogError};
use airlock_core::policy::{PolicyEngine, PolicyError, PolicySource, version_of};
use airlock_core::policy_test::{Case, CaseFileError, parse_cases};

use crate::config::PolicySection;

/// Why the bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("catalog `{path}`: {source}")]
    Catalog { path: String, source: CatalogError },
    #[error("no policies: `{0}` holds no *.cedar file, so every request would be refused")]
    NoPolicies(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cases(#[from] CaseFileError),
}

/// Everything policies decide with.
#[derive(Debug)]
pub struct PolicyBundle {
    pub catalog: Catalog,
    pub engine: PolicyEngine,
    /// SHA-256 of the catalog and policy sources: every decision records it.
    pub version: String,
}

fn read(path: &Path) -> Result<String, BundleError> {
    std::fs::read_to_string(path).map_err(|source| BundleError::Read { path: path.display().to_string(), source })
}

/// The files in `dir` ending in `.extension`, sorted, as (file name, text).
fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<(String, String)>, BundleError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| BundleError::Read { path: dir.display().to_string(), source })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| BundleError::Read { path: dir.display().to_string(), source })?.path();
        if path.extension().is_some_and(|e| e == extension) {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            read(&p).map(|text| (name, text))
        })
        .collect()
}

impl PolicyBundle {
    pub fn load(section: &PolicySection) -> Result<Self, BundleError> {
        let catalog_text = read(&section.catalog)?;
        let mut catalog = Catalog::parse(&catalog_text)
            .map_err(|source| BundleError::Catalog { path: section.catalog.display().to_string(), source })?;
        catalog.rebase_files(section.catalog.parent().unwrap_or(Path::new(".")));
        let files = files_with_extension(&section.policies, "cedar")?;
        if files.is_empty() {
            return Err(BundleError::NoPolicies(section.policies.display().to_string()));
        }
        let sources: Vec<PolicySource> =
            files.iter().map(|(file, text)| PolicySource { file: file.clone(), text: text.clone() }).collect();
        let engine = PolicyEngine::new(&sources, &catalog)?;
        let version = version_of(
            files.iter().map(|(f, t)| (f.as_str(), t.as_str())).chain([("catalog.toml", catalog_text.as_str())]),
        );
        Ok(Self { catalog, engine, version })
    }
}

/// Reads every `*.toml` file of policy test cases in `dir`, as (file name, cases).
pub fn load_cases(dir: &Path) -> Result<Vec<(String, Vec<Case>)>, BundleError> {
    files_with_extension(dir, "toml")?
        .into_iter()
        .map(|(file, text)| Ok((file.clone(), parse_cases(&file, &text)?)))
        .collect()
}
