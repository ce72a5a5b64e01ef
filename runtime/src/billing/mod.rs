//! Metering, rating and budgets.

pub mod budget;
mod ledger;
pub mod usage;

pub use budget::{BudgetConfig, Budgets, Reservation};
pub use usage::{UsageConfig, UsageRow, UsageWriter};
