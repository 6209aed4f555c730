//! See README.md: this crate is planned and holds no code yet.
