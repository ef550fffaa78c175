//! A small builder for ONNX graphs: nodes named after what they compute, initializers
//! stored once in the model's float type, shape constants shared between blocks.

use std::collections::HashMap;

use half::f16;

use crate::int8::Int8Range;

use super::proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attr_type, data_type, tensor_shape_proto, type_proto,
};

/// The float type of the model's weights and arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
}

impl Float {
    pub fn data_type(self) -> i32 {
        match self {
            Float::F32 => data_type::FLOAT,
            Float::F16 => data_type::FLOAT16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Float::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Float::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// How the Linear layers of the ViT blocks are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Linears {
    /// `Gemm` in the model's float type.
    #[default]
    Float,
    /// Per-output-channel int8 weights, activations quantised at run time
    /// ([`crate::int8`]).
    Int8(Int8Range),
}

/// A dimension of a graph input or output.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

pub struct Graph {
    pub opset: i64,
    pub float: Float,
    pub linears: Linears,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    shared: HashMap<String, String>,
}

impl Graph {
    pub fn new(opset: i64, float: Float) -> Self {
        Self {
            opset,
            float,
            linears: Linears::default(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            shared: HashMap::new(),
        }
    }

    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    pub fn output(&mut self, name: &str, elem: i32, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds a node with one output, named `name`, and returns that name.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_n(op, name, inputs, attrs, &[name.to_string()]);
        name.to_string()
    }

    /// Adds a node with the given outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: &[String],
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name: name.to_string(),
            op_type: op.to_string(),
            domain: String::new(),
            attribute: attrs,
        });
    }

    /// A weight in the model's float type, stored once per name (a second call with the
    /// same name, e.g. the final norm used by two outputs, reuses the first).
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        let float = self.float;
        self.initializer(name, dims, float.data_type(), || float.encode(values))
    }

    /// An int8 tensor (quantised weights), stored once per name like [`Graph::weight`].
    pub fn int8(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        self.initializer(name, dims, data_type::INT8, || {
            values.iter().map(|&v| v as u8).collect()
        })
    }

    /// Stores an initializer once per name; `raw` is encoded only the first time.
    fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        raw: impl FnOnce() -> Vec<u8>,
    ) -> String {
        let key = format!("w:{name}");
        if self.shared.contains_key(&key) {
            return name.to_string();
        }
        self.shared.insert(key, name.to_string());
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.to_string(),
            raw_data: raw(),
        });
        name.to_string()
    }

    /// A float scalar constant, shared by value.
    pub fn scalar(&mut self, v: f32) -> String {
        let key = format!("f:{:08x}", v.to_bits());
        if let Some(n) = self.shared.get(&key) {
            return n.clone();
        }
        let name = format!("const_{}", format_float(v));
        self.weight(&name, &[], &[v]);
        self.shared.insert(key, name.clone());
        name
    }

    /// An int64 constant (a 1-D list, or a scalar when `scalar`), shared by value.
    pub fn ints(&mut self, values: &[i64], scalar: bool) -> String {
        let key = format!("i:{scalar}:{values:?}");
        if let Some(n) = self.shared.get(&key) {
            return n.clone();
        }
        let text: Vec<String> = values
            .iter()
            .map(|v| v.to_string().replace('-', "m"))
            .collect();
        let name = format!("const_{}{}", if scalar { "s" } else { "i" }, text.join("_"));
        self.initializers.push(TensorProto {
            dims: if scalar {
                vec![]
            } else {
                vec![values.len() as i64]
            },
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        self.shared.insert(key, name.clone());
        name
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn into_proto(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            doc_string: String::new(),
            input: self.inputs,
            output: self.outputs,
        }
    }
}

fn format_float(v: f32) -> String {
    format!("{v}").replace('-', "m").replace('.', "p")
}

fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: Some(i),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f: Some(f),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: Some(s.as_bytes().to_vec()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_shared_by_value() {
        let mut g = Graph::new(17, Float::F32);
        let a = g.ints(&[0, -1], false);
        assert_eq!(a, "const_i0_m1");
        assert_eq!(g.ints(&[0, -1], false), a);
        assert_ne!(g.ints(&[0], true), g.ints(&[0], false));
        assert_eq!(g.scalar(0.5), g.scalar(0.5));
        assert_eq!(g.weight("w", &[1], &[1.0]), g.weight("w", &[1], &[1.0]));
        assert_eq!(g.into_proto("g").initializer.len(), 5);
    }

    #[test]
    fn fp16_weights_are_half_width() {
        let mut g = Graph::new(17, Float::F16);
        g.weight("w", &[2], &[1.0, -2.0]);
        let p = g.into_proto("g");
        assert_eq!(p.initializer[0].raw_data, vec![0x00, 0x3c, 0x00, 0xc0]);
        assert_eq!(p.initializer[0].data_type, data_type::FLOAT16);
    }

    #[test]
    fn zero_valued_attributes_are_still_written() {
        use prost::Message;
        let a = attr_int("axis", 0);
        let bytes = a.encode_to_vec();
        assert_eq!(AttributeProto::decode(&bytes[..]).unwrap().i, Some(0));
    }
}
