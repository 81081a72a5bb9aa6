//! Report pieces that stages produce for `report.md`: SVG plots.

pub mod plot;
