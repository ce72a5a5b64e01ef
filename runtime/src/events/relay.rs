//! The outbox relay: publishes recorded events to JetStream, exactly once by message id.
