//! Metering, rating and budgets.

pub mod budget;

pub use budget::Budgets;
