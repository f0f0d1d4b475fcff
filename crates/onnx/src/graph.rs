//! A small builder for ONNX graphs: nodes with generated value names,
//! initializers stored as little-endian `raw_data`, typed graph inputs and
//! outputs. It knows nothing about transformers.

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// Element types the exporter emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    Bool,
    I8,
    /// FP8 e4m3fn (opset 19+ QuantizeLinear / DequantizeLinear).
    F8E4M3,
}

impl Elem {
    pub fn onnx(self) -> i32 {
        (match self {
            Elem::F32 => DataType::Float,
            Elem::F16 => DataType::Float16,
            Elem::I64 => DataType::Int64,
            Elem::Bool => DataType::Bool,
            Elem::I8 => DataType::Int8,
            Elem::F8E4M3 => DataType::Float8e4m3fn,
        }) as i32
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// A node attribute.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

pub struct GraphBuilder {
    /// The opset the graph targets: a few operators changed signature.
    pub opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(opset: i64) -> Self {
        GraphBuilder {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            counter: 0,
        }
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds a node with one output; returns the output's name (`hint` plus a
    /// counter, so names are unique and readable in Netron).
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        hint: &str,
    ) -> String {
        let out = self.fresh(hint);
        self.op_named(op, inputs, attrs, &out);
        out
    }

    /// A value name not used before: `hint` plus a counter.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node whose output has exactly the name `out` (graph outputs).
    pub fn op_named(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: &str) {
        self.counter += 1;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("{op}_{}", self.counter)),
            op_type: Some(op.to_string()),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// A float initializer named `name`, stored as `elem` (F32 or F16).
    pub fn init_float(&mut self, name: &str, shape: &[usize], data: &[f32], elem: Elem) -> String {
        let raw: Vec<u8> = match elem {
            Elem::F16 => data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        self.push_init(name, shape, elem, raw)
    }

    /// An 8-bit initializer of `elem` (int8 or e4m3fn) from its raw bytes:
    /// quantized weights, zero points.
    pub fn init_bytes(&mut self, name: &str, shape: &[usize], elem: Elem, raw: Vec<u8>) -> String {
        self.push_init(name, shape, elem, raw)
    }

    pub fn init_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.push_init(name, shape, Elem::I64, raw)
    }

    /// A 1-D int64 constant with a generated name.
    pub fn const_i64(&mut self, values: &[i64], hint: &str) -> String {
        let name = self.fresh(hint);
        self.init_i64(&name, &[values.len()], values)
    }

    /// A scalar float constant stored as `elem`.
    pub fn scalar(&mut self, value: f32, elem: Elem, hint: &str) -> String {
        let name = self.fresh(hint);
        self.init_float(&name, &[], &[value], elem)
    }

    fn push_init(&mut self, name: &str, shape: &[usize], elem: Elem, raw: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(elem.onnx()),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Reduction over `axes`: opset 18 moved `axes` from an attribute to an
    /// input for ReduceMax/ReduceL2/ReduceMean (ReduceSum since 13).
    pub fn reduce(
        &mut self,
        op: &str,
        x: &str,
        axes: &[i64],
        keepdims: bool,
        hint: &str,
    ) -> String {
        let keep = ("keepdims", Attr::Int(keepdims as i64));
        if op == "ReduceSum" || self.opset >= 18 {
            let axes = self.const_i64(axes, "axes");
            self.op(op, &[x, &axes], vec![keep], hint)
        } else {
            self.op(
                op,
                &[x],
                vec![keep, ("axes", Attr::Ints(axes.to_vec()))],
                hint,
            )
        }
    }

    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.to_string()),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }

    pub fn initializer_bytes(&self) -> usize {
        self.initializers
            .iter()
            .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len()))
            .sum()
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = Some(i);
            p.r#type = Some(AttributeType::Int as i32);
        }
        Attr::Float(f) => {
            p.f = Some(f);
            p.r#type = Some(AttributeType::Float as i32);
        }
        Attr::Ints(v) => {
            p.ints = v;
            p.r#type = Some(AttributeType::Ints as i32);
        }
    }
    p
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.onnx()),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
