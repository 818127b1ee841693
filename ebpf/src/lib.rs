//! Butterfly XDP programs and loader (issue 5).
