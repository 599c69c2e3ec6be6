//! umt5 (being written).
