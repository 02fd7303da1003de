//! Homeport: a clustered IoT device broker and runtime.
pub mod mqtt;
