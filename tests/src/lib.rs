//! Helpers for end-to-end tests in network namespaces.
