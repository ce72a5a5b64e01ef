//! Feature flags served from the tenant's bundle.

pub mod eval;
