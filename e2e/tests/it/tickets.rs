//! Placeholder: tests arrive with their issue.
