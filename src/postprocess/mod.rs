//! Post-processing of decoded frames: RIFE frame interpolation ([`rife`]), applied chunk by
//! chunk as frames are decoded.

pub mod rife;
