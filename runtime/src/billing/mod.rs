//! Metering, rating and budgets.

pub mod budget;
mod ledger;

pub use budget::{BudgetConfig, Budgets, Reservation};
