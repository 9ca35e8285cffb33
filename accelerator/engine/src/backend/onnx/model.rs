//! What a model takes and gives, read from the model itself, and the check of a workload against
//! it. Plain data: the rules are tested without ONNX Runtime.
//!
//! A model tensor's first dimension is the batch: dynamic (any batch) or fixed (that batch
//! exactly; smaller batches are padded). The other dimensions are the per-sample shape a
//! workload's tensor must have: fixed ones must match, dynamic ones (a sequence length, say)
//! take the workload's value.

use qdl_shared::workload::{DType, OutputKind, TensorSpec, WorkloadSpec};

/// How a workload fails to describe a model ([`ModelInfo::check`]). Each says what differs and
/// lists what the model takes or gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelMismatch {
    /// The model answers with tensors, the workload with another output kind.
    #[error(
        "{model} answers with its output tensors: describe the workload with output_kind = \"tensors\" and \
         `outputs` chosen among: {outputs}"
    )]
    OutputKind {
        /// The model file.
        model: String,
        /// The model's outputs, described.
        outputs: String,
    },
    /// The workload names an input or output the model does not have.
    #[error("{model} has no {what} {name:?}; its {what}s: {has}")]
    Missing {
        /// The model file.
        model: String,
        /// "input" or "output".
        what: &'static str,
        /// The workload's tensor name.
        name: String,
        /// The model's tensors of that kind, described.
        has: String,
    },
    /// The workload does not provide one of the model's inputs.
    #[error("the workload does not provide {model}'s input {input}; its inputs: {has}")]
    NotProvided {
        /// The model file.
        model: String,
        /// The missing input, described.
        input: String,
        /// The model's inputs, described.
        has: String,
    },
    /// A model tensor's element type is one qdl does not carry.
    #[error("{model}'s {what} {name} has element type {type_name}, which qdl does not carry")]
    UncarriedType {
        /// The model file.
        model: String,
        /// "input" or "output".
        what: &'static str,
        /// The tensor's name.
        name: String,
        /// The element type as ONNX Runtime names it.
        type_name: String,
    },
    /// The element types differ.
    #[error("{what} {name:?}: the workload says {workload}, {model} takes {takes}")]
    DType {
        /// "input" or "output".
        what: &'static str,
        /// The tensor's name.
        name: String,
        /// The workload's element type.
        workload: &'static str,
        /// The model file.
        model: String,
        /// The model's element type.
        takes: &'static str,
    },
    /// The per-sample shapes differ.
    #[error("{what} {name:?}: the workload says {workload}, {model} has {has} (the first dimension is the batch)")]
    Shape {
        /// "input" or "output".
        what: &'static str,
        /// The tensor's name.
        name: String,
        /// The workload's tensor, described.
        workload: String,
        /// The model file.
        model: String,
        /// The model's tensor, described.
        has: String,
    },
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTensor {
    /// Its name in the graph.
    pub name: String,
    /// Its element type, if qdl can carry it.
    pub dtype: Option<DType>,
    /// The element type as ONNX Runtime names it (for messages).
    pub type_name: String,
    /// Dimensions, batch first; -1 for a dynamic one.
    pub dims: Vec<i64>,
}

impl ModelTensor {
    fn describe(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        format!("{} {} [{}]", self.name, self.dtype.map(dtype_name).unwrap_or(&self.type_name), dims.join(", "))
    }
}

/// A model's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model file's name (for messages).
    pub file: String,
    /// Inputs, in graph order.
    pub inputs: Vec<ModelTensor>,
    /// Outputs, in graph order.
    pub outputs: Vec<ModelTensor>,
}

/// The config/wire name of a dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::I8 => "i8",
        DType::U8 => "u8",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::F16 => "f16",
        DType::F32 => "f32",
    }
}

fn spec_describe(t: &TensorSpec) -> String {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{} {} [batch, {}]", t.name, dtype_name(t.dtype), dims.join(", "))
}

impl ModelInfo {
    /// "inputs: ...; outputs: ..." with names, dtypes and dimensions (? for dynamic ones): what a
    /// workload must describe.
    pub fn summary(&self) -> String {
        let list = |ts: &[ModelTensor]| ts.iter().map(ModelTensor::describe).collect::<Vec<_>>().join(", ");
        format!("{}: inputs {}; outputs {}", self.file, list(&self.inputs), list(&self.outputs))
    }

    /// The batch every run must have, when the model fixes it (its inputs' first dimension).
    pub fn fixed_batch(&self) -> Option<usize> {
        self.inputs.iter().filter_map(|t| t.dims.first().copied()).find(|&d| d > 0).map(|d| d as usize)
    }

    /// Checks that `spec` describes this model: every model input (and no other) with its dtype
    /// and per-sample shape, and outputs that the model has. The error says what differs and
    /// lists what the model takes or gives.
    pub fn check(&self, spec: &WorkloadSpec) -> Result<(), ModelMismatch> {
        let list = |ts: &[ModelTensor]| ts.iter().map(ModelTensor::describe).collect::<Vec<_>>().join("; ");
        let model = || self.file.clone();
        if spec.output_kind != OutputKind::Tensors {
            return Err(ModelMismatch::OutputKind { model: model(), outputs: list(&self.outputs) });
        }
        for t in &spec.inputs {
            if !self.inputs.iter().any(|m| m.name == t.name) {
                let has = list(&self.inputs);
                return Err(ModelMismatch::Missing { model: model(), what: "input", name: t.name.clone(), has });
            }
        }
        for m in &self.inputs {
            let Some(t) = spec.inputs.iter().find(|t| t.name == m.name) else {
                return Err(ModelMismatch::NotProvided {
                    model: model(),
                    input: m.describe(),
                    has: list(&self.inputs),
                });
            };
            matches(m, t, "input", &self.file)?;
        }
        for t in &spec.outputs {
            let Some(m) = self.outputs.iter().find(|m| m.name == t.name) else {
                let has = list(&self.outputs);
                return Err(ModelMismatch::Missing { model: model(), what: "output", name: t.name.clone(), has });
            };
            matches(m, t, "output", &self.file)?;
        }
        Ok(())
    }
}

fn matches(m: &ModelTensor, t: &TensorSpec, what: &'static str, file: &str) -> Result<(), ModelMismatch> {
    let Some(dtype) = m.dtype else {
        return Err(ModelMismatch::UncarriedType {
            model: file.into(),
            what,
            name: m.name.clone(),
            type_name: m.type_name.clone(),
        });
    };
    if dtype != t.dtype {
        return Err(ModelMismatch::DType {
            what,
            name: t.name.clone(),
            workload: dtype_name(t.dtype),
            model: file.into(),
            takes: dtype_name(dtype),
        });
    }
    let shape_ok =
        m.dims.len() == t.shape.len() + 1 && m.dims[1..].iter().zip(&t.shape).all(|(&d, &s)| d < 0 || d == s as i64);
    if !shape_ok {
        return Err(ModelMismatch::Shape {
            what,
            name: t.name.clone(),
            workload: spec_describe(t),
            model: file.into(),
            has: m.describe(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: DType, dims: &[i64]) -> ModelTensor {
        ModelTensor { name: name.into(), dtype: Some(dtype), type_name: dtype_name(dtype).into(), dims: dims.to_vec() }
    }

    fn minilm() -> ModelInfo {
        ModelInfo {
            file: "minilm.onnx".into(),
            inputs: vec![t("input_ids", DType::I64, &[-1, -1]), t("attention_mask", DType::I64, &[-1, -1])],
            outputs: vec![t("461", DType::F32, &[-1, 384]), t("output", DType::I64, &[-1, -1])],
        }
    }

    fn spec() -> WorkloadSpec {
        let ts = |n: &str, d, s: &[u32]| TensorSpec { name: n.into(), dtype: d, shape: s.to_vec() };
        WorkloadSpec {
            name: "minilm".into(),
            // Wire order may differ from the graph's.
            inputs: vec![ts("attention_mask", DType::I64, &[128]), ts("input_ids", DType::I64, &[128])],
            output_kind: OutputKind::Tensors,
            output_bytes: 1536,
            outputs: vec![ts("461", DType::F32, &[384])],
            generation: None,
        }
    }

    #[test]
    fn a_matching_workload_passes_with_dynamic_dimensions_taking_its_values() {
        minilm().check(&spec()).unwrap();
        assert_eq!(minilm().fixed_batch(), None);
    }

    #[test]
    fn every_mismatch_is_named() {
        let m = minilm();
        let mut s = spec();
        s.inputs[0].dtype = DType::I32;
        let e = m.check(&s).unwrap_err().to_string();
        assert!(e.contains("\"attention_mask\"") && e.contains("i32") && e.contains("i64"), "{e}");

        let mut s = spec();
        s.inputs.pop();
        let e = m.check(&s).unwrap_err().to_string();
        assert!(e.contains("does not provide") && e.contains("input_ids"), "{e}");

        let mut s = spec();
        s.inputs[1].name = "token_type_ids".into();
        let e = m.check(&s).unwrap_err().to_string();
        assert!(e.contains("no input \"token_type_ids\"") && e.contains("attention_mask i64 [?, ?]"), "{e}");

        let mut s = spec();
        s.outputs[0].shape = vec![768];
        let e = m.check(&s).unwrap_err().to_string();
        assert!(e.contains("[batch, 768]") && e.contains("461 f32 [?, 384]"), "{e}");

        let mut s = spec();
        s.outputs[0].name = "pooled".into();
        assert!(m.check(&s).unwrap_err().to_string().contains("no output \"pooled\""));

        let mut s = spec();
        s.inputs[0].shape = vec![2, 64];
        assert!(m.check(&s).unwrap_err().to_string().contains("first dimension is the batch"));

        let e = m.check(&WorkloadSpec::bert()).unwrap_err().to_string();
        assert!(e.contains("output_kind = \"tensors\"") && e.contains("461 f32"), "{e}");
    }

    #[test]
    fn fixed_batch_and_uncarried_types() {
        let mut m = minilm();
        m.inputs[0].dims[0] = 1;
        assert_eq!(m.fixed_batch(), Some(1));
        m.outputs[0].dtype = None;
        m.outputs[0].type_name = "Float64".into();
        assert!(m.check(&spec()).unwrap_err().to_string().contains("Float64, which qdl does not carry"));
    }
}
