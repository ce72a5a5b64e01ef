//! Scenario tests of the Tenant controller against a mocked API server
//! (`tower_test::mock::pair`), in the style of kube-rs controller-rs `fixtures.rs`: each
//! scenario lists the calls the controller must make, in order, and what the API server
//! answers; the verifier asserts method, path, field manager and body, fails on a call that
//! never comes (timeout) and on one that was not expected. The database is the in-memory
//! [`FakeProvisioner`]; the real provisioner is tested against PostgreSQL in
//! `tests/database.rs`.

mod failures;
mod harness;
mod rbac;
mod scenarios;
mod world;

pub(super) use harness::*;
