//! amct's graph IR: nodes, named values with types and shapes, initializers.
//!
//! The IR is what every stage reads and rewrites; `onnx::import` builds it
//! from a file and `onnx::export` writes it back. `verify` checks it after
//! every rewrite, `infer_shapes` fills in value types.

mod dtype;
mod error;
mod model;
mod node;
pub mod shape_infer;
pub mod tensor;
mod topo;
mod value;
mod verify;

pub use dtype::DType;
pub use error::GraphError;
pub use model::{Graph, Model, OpsetId};
pub use node::Node;
pub use tensor::{LeBytes, Tensor, TensorData};
pub use topo::{sort_topologically, topological_order};
pub use value::{shape_string, Dim, ValueInfo};
pub use verify::{verify, verify_model};
