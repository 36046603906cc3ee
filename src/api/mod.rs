//! SQL functions, one file per concern.
pub mod addresses;
pub mod probe;
pub mod status;
