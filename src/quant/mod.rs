//! Post-training quantization: observers and range searches for
//! activations, weight quantizers, the quantization plan (which nodes, where
//! Q/DQ go), the QDQ writers for the fake-quant and deploy models, the
//! quantization record and accuracy-based rollback.

pub mod adaround;
pub mod calibrate;
pub mod equalize;
pub mod histogram;
pub mod observer;
pub mod plan;
pub mod qat_graph;
pub mod qdq;
pub mod qparams;
pub mod quantizer;
pub mod range_search;
pub mod record;
pub mod smooth;
pub mod weights;

pub use observer::Observer;
pub use plan::{plan, QuantPlan, WeightLayer};
pub use qdq::{write_qdq, ActQuant, QdqForm};
pub use qparams::{IntGrid, QParams};
pub use quantizer::{Built, Quantizer};
pub use range_search::choose_range;
pub use weights::{quantize_weight, QuantWeight};
