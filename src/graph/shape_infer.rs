//! Shape and type inference (placeholder until written).
