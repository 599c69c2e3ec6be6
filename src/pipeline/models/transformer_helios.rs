//! transformer_helios (being written).
