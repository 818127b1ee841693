//! Butterfly control plane (issue 7).
