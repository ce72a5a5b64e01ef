//! The workflow orchestrator: runs the tenant's Workflows durably (see docs/workflows.md).
//!
//! - [`engine`] executes a run node by node and checkpoints every step through a
//!   [`engine::Journal`]; it does no I/O itself.
//! - [`executor`] is the real [`engine::NodeExecutor`]: agents, model calls, tools.
//! - [`store`] keeps runs and steps in PostgreSQL (RLS like every tenant table); [`journal`]
//!   is the checkpoint the workers use: one statement that only lands while the replica
//!   holds the run's lease.
//! - [`worker`] claims runnable runs (`FOR UPDATE SKIP LOCKED`), heartbeats their leases and
//!   drives them; a run whose replica died is claimed again once its lease expires.
//! - [`api`] is `/api/v1/orchestrator/*`: start, list, get, approve, cancel, events (SSE).

pub mod api;
pub mod engine;
pub mod executor;
pub mod expr;
pub mod follow;
pub mod hub;
pub mod journal;
pub mod model;
pub mod store;
pub mod worker;

pub use engine::{Journal, NodeExecutor, Work, WorkCall, drive};
pub use hub::RunHub;
pub use model::{Cursor, Decision, Run, RunStatus, StepRecord, StepStatus, Wait, WaitKind};
