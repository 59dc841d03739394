//! The model's one description of its parameters. Every module is built by asking a
//! [`ParamBuilder`] for each parameter under its official name (the `models/mar.py` /
//! `models/vae.py` state-dict key), with its shape and the official initialization. Where the
//! values come from is the builder's [`TensorSource`]: a [`WeightMap`] (loading a checkpoint)
//! or an [`Initializer`] (fresh weights for training). The builder remembers each parameter's
//! name, and the model keeps them ([`ParamNames`]), so exporting ([`super::Model::state_dict`])
//! has no name list of its own. Adding a parameter to a module's constructor is the one edit
//! that loads, initializes and exports it.

use crate::base::{HostTensor, WeightMap};
use crate::error::{DisaError, Result};
use crate::noise::SeededNoise;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Device, Shape, Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How the official code initializes a parameter (`MAR.initialize_weights`,
/// `SimpleMLPAdaLN.initialize_weights`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `xavier_uniform_` of a `[out, in]` matrix: U(±√(6 / (in + out))).
    Xavier,
    /// `normal_(std=σ)`.
    Normal(f64),
    Zeros,
    Ones,
    /// Only ever loaded: the VAE is trained elsewhere, and initializing it is refused.
    Pretrained,
}

/// Where parameter values come from while a module is built.
pub trait TensorSource {
    /// The values of the official tensor `key`, of exactly `shape`, in the official layout
    /// (row-major; a Linear weight `[out, in]`). `init` is how a fresh model draws it.
    fn tensor(&mut self, key: &str, shape: &[usize], init: Init) -> Result<HostTensor>;
}

/// Loading: each tensor is checked (present, exact shape, finite) and moved out of the map, so
/// the weights are never held twice.
impl TensorSource for WeightMap {
    fn tensor(&mut self, key: &str, shape: &[usize], _init: Init) -> Result<HostTensor> {
        self.take(key, shape)
    }
}

/// Initializing: draws every tensor as the official code does, from one seeded stream in the
/// order the modules ask for them.
pub struct Initializer {
    rng: SeededNoise,
}

impl Initializer {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SeededNoise::new(seed),
        }
    }
}

impl TensorSource for Initializer {
    fn tensor(&mut self, key: &str, shape: &[usize], init: Init) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        let values = match init {
            Init::Xavier => {
                let [out, inp] = shape else {
                    return Err(DisaError::Internal(format!(
                        "Xavier initialization of `{key}` needs a matrix, not {shape:?}"
                    )));
                };
                let bound = (6.0 / (inp + out) as f64).sqrt();
                (0..n)
                    .map(|_| ((self.rng.uniform() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            }
            Init::Normal(std) => (0..n)
                .map(|_| (self.rng.standard_normal() * std) as f32)
                .collect(),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Pretrained => {
                return Err(DisaError::Internal(format!(
                    "`{key}` is only ever loaded, never initialized"
                )));
            }
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            values,
        })
    }
}

/// What the model keeps about one parameter for export.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    /// The official tensor `key`; `transposed` for a Linear weight, which Burn keeps as
    /// `[in, out]` and PyTorch as `[out, in]`.
    Official { key: String, transposed: bool },
    /// Not a tensor of the official state dict (a LayerNorm without affine parameters).
    Constant,
}

/// `[rows, cols]` row-major values as `[cols, rows]`: a Linear weight between PyTorch's
/// `[out, in]` and Burn's `[in, out]`, both ways.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Builds modules' parameters from a [`TensorSource`], remembering each one's official name.
pub struct ParamBuilder<'a> {
    source: &'a mut dyn TensorSource,
    device: Device,
    entries: HashMap<ParamId, Entry>,
    /// Describing only ([`ParamBuilder::describe`]): the values go here, and the modules get
    /// lazy parameters that are never materialized.
    described: Option<BTreeMap<String, HostTensor>>,
    /// Where Linear weights may come as quantized tensors ([`ParamBuilder::with_quantized`]).
    quantized: Option<QuantizedWeights>,
}

/// Gives a Linear weight as a quantized tensor on the device, or `None` to keep f32: called
/// with the official key, the loaded `[out, in]` values and the device, it returns the weight
/// in the official `[out, in]` layout. The loader (`src/load.rs`) makes one from what a file
/// stored quantized; the model needs to know nothing of file formats.
pub type QuantizedWeights = Box<dyn FnMut(&str, &HostTensor, &Device) -> Result<Option<Tensor<2>>>>;

impl<'a> ParamBuilder<'a> {
    /// A builder of modules on `device` with the values of `source`.
    pub fn new(source: &'a mut dyn TensorSource, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            entries: HashMap::new(),
            described: None,
            quantized: None,
        }
    }

    /// Linear weights that `quantized` gives as quantized tensors stay quantized on a GPU
    /// (Burn's matmul dequantizes them as it reads). The CPU backend always keeps f32 weights
    /// (its matmul is fastest there), and describing builders never ask.
    pub fn with_quantized(mut self, quantized: QuantizedWeights) -> Self {
        self.quantized = Some(quantized);
        self
    }

    /// A builder that only collects the values of `source` under their official names (see
    /// [`ParamBuilder::into_described`]): the modules it builds are placeholders, to drop.
    pub fn describe(source: &'a mut dyn TensorSource) -> Self {
        Self {
            described: Some(BTreeMap::new()),
            ..Self::new(source, &Device::flex())
        }
    }

    /// The tensors collected by a [`ParamBuilder::describe`] builder, under their official
    /// names and in their official layout.
    pub fn into_described(self) -> BTreeMap<String, HostTensor> {
        self.described.unwrap_or_default()
    }

    /// The parameter `key` of exactly `shape`.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<D>>> {
        let t = self.source.tensor(key, &shape, init)?;
        Ok(self.register(key, t, false, shape))
    }

    /// A PyTorch `nn.Linear(d_in, d_out)`: `prefix.weight` (`[out, in]`, drawn by `init`) and
    /// `prefix.bias` (`[out]`, zero when initialized), as Burn's `Linear` (weight `[in, out]`).
    pub fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        init: Init,
    ) -> Result<Linear> {
        let key = format!("{prefix}.weight");
        let t = self.source.tensor(&key, &[d_out, d_in], init)?;
        let weight = match self.quantized_weight(&key, &t)? {
            Some(weight) => weight,
            None => self.register(&key, t, true, [d_in, d_out]),
        };
        let bias_init = if init == Init::Pretrained {
            Init::Pretrained
        } else {
            Init::Zeros
        };
        let bias = self.tensor(&format!("{prefix}.bias"), [d_out], bias_init)?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    /// The Linear weight `key` (`t`, `[out, in]`) as a quantized `[in, out]` parameter (a
    /// transposed view of the `[out, in]` blocks), where [`ParamBuilder::with_quantized`] gives
    /// one and the device is a GPU.
    fn quantized_weight(&mut self, key: &str, t: &HostTensor) -> Result<Option<Param<Tensor<2>>>> {
        if self.described.is_some() || crate::backend::is_plain_cpu(&self.device) {
            return Ok(None);
        }
        let Some(quantized) = self.quantized.as_mut() else {
            return Ok(None);
        };
        let Some(weight) = quantized(key, t, &self.device)? else {
            return Ok(None);
        };
        if weight.dims().to_vec() != t.shape {
            return Err(DisaError::Internal(format!(
                "quantized `{key}` is {:?}, not {:?}",
                weight.dims(),
                t.shape
            )));
        }
        let param = Param::from_tensor(weight.transpose()).set_require_grad(false);
        self.entries.insert(
            param.id,
            Entry::Official {
                key: key.to_string(),
                transposed: true,
            },
        );
        Ok(Some(param))
    }

    /// A constant of ones that is no official tensor: never trained, never exported.
    pub fn constant_ones<const D: usize>(&mut self, shape: [usize; D]) -> Param<Tensor<D>> {
        let param = Param::from_tensor(Tensor::ones(shape, &self.device)).set_require_grad(false);
        self.entries.insert(param.id, Entry::Constant);
        param
    }

    /// Makes the parameter of `t` (official layout; transposed to `shape` for a Linear
    /// weight) and records its name.
    fn register<const D: usize>(
        &mut self,
        key: &str,
        t: HostTensor,
        transposed: bool,
        shape: [usize; D],
    ) -> Param<Tensor<D>> {
        let param = match &mut self.described {
            Some(described) => {
                described.insert(key.to_string(), t);
                Param::uninitialized(
                    ParamId::new(),
                    move |device, _| Tensor::zeros(shape, device),
                    self.device.clone(),
                    true,
                    Shape::from(shape),
                )
            }
            None => {
                let values = if transposed {
                    transpose(&t.values, t.shape[0], t.shape[1])
                } else {
                    t.values
                };
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, shape),
                    &self.device,
                ))
            }
        };
        self.entries.insert(
            param.id,
            Entry::Official {
                key: key.to_string(),
                transposed,
            },
        );
        param
    }

    /// Records the names of `module`'s parameters (built by this builder) under `path`, the
    /// module's place in the model. Names are kept by module path, which, unlike parameter
    /// ids, survives renumbering (training gives its parameters ids by position).
    pub fn name_params<M: Module>(
        &self,
        path: &str,
        module: &M,
        names: &mut ParamNames,
    ) -> Result<()> {
        let mut visitor = Namer {
            path: vec![path.to_string()],
            entries: &self.entries,
            names: Arc::make_mut(&mut names.0),
            missing: None,
        };
        module.visit(&mut visitor);
        match visitor.missing {
            Some(p) => Err(DisaError::Internal(format!(
                "parameter `{p}` was not built by the parameter builder, so it has no name"
            ))),
            None => Ok(()),
        }
    }
}

/// The official names of a model's parameters, by module path (`head.res_blocks.0.ada_ln.weight`):
/// whatever sits at a path (after optimizer steps, renumbered ids, clones) exports under its name.
#[derive(Clone, Debug, Default)]
pub struct ParamNames(Arc<BTreeMap<String, Entry>>);

impl ParamNames {
    /// Reads `module`'s parameters (under `path`, as named) back to the host into `out`, under
    /// their official names and in the official layout.
    pub fn export<M: Module>(
        &self,
        path: &str,
        module: &M,
        out: &mut BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        let mut visitor = Exporter {
            path: vec![path.to_string()],
            names: &self.0,
            out,
            error: None,
        };
        module.visit(&mut visitor);
        visitor.error.map_or(Ok(()), Err)
    }
}

/// Maps parameter ids to module paths.
struct Namer<'a> {
    path: Vec<String>,
    entries: &'a HashMap<ParamId, Entry>,
    names: &'a mut BTreeMap<String, Entry>,
    missing: Option<String>,
}

impl ModuleVisitor for Namer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        match self.entries.get(&param.id) {
            Some(entry) => {
                self.names.insert(path, entry.clone());
            }
            None => {
                self.missing.get_or_insert(path);
            }
        }
    }
}

/// Reads named parameters back to the host.
struct Exporter<'a> {
    path: Vec<String>,
    names: &'a BTreeMap<String, Entry>,
    out: &'a mut BTreeMap<String, HostTensor>,
    error: Option<DisaError>,
}

impl ModuleVisitor for Exporter<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let path = self.path.join(".");
        let (key, transposed) = match self.names.get(&path) {
            Some(Entry::Official { key, transposed }) => (key, *transposed),
            Some(Entry::Constant) => return,
            None => {
                self.error = Some(DisaError::Internal(format!(
                    "parameter `{path}` has no official name to export it under"
                )));
                return;
            }
        };
        let shape = param.dims().to_vec();
        let mut value = param.val();
        if matches!(value.dtype(), burn::tensor::DType::QFloat(_)) {
            // A Linear weight kept quantized on the GPU: exported as the f32 values it runs.
            value = value.dequantize();
        }
        let values = match value.into_data().try_to_vec::<f32>() {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(DisaError::Device(format!("reading `{key}` back: {e:?}")));
                return;
            }
        };
        let t = if transposed {
            HostTensor {
                shape: vec![shape[1], shape[0]],
                values: transpose(&values, shape[0], shape[1]),
            }
        } else {
            HostTensor { shape, values }
        };
        self.out.insert(key.clone(), t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_twice_is_the_identity() {
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = transpose(&v, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), v);
    }

    #[test]
    fn a_fresh_model_is_drawn_as_the_official_code_initializes_it() {
        let c = crate::model::MarConfig::fashion();
        let w = c.initial_weights(1);
        let t = |k: &str| &w.tensors[k];
        let std = |v: &[f32]| {
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
        };
        // Embeddings ~ N(0, 0.02²).
        let s = std(&t("class_emb.weight").values);
        assert!((s - 0.02).abs() < 0.002, "class_emb std {s}");
        // Xavier-uniform within ±√(6/(in+out)), reaching near the bound; bias zero.
        let z = t("z_proj.weight");
        assert_eq!(z.shape, vec![c.encoder_embed_dim, c.token_dim()]);
        let bound = (6.0 / (c.encoder_embed_dim + c.token_dim()) as f64).sqrt() as f32;
        let max = z.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max <= bound && max > 0.9 * bound,
            "max {max}, bound {bound}"
        );
        assert!(t("z_proj.bias").values.iter().all(|&v| v == 0.0));
        // LayerNorms (1, 0); the head's adaLN modulations and final linear zero.
        assert!(t("encoder_norm.weight").values.iter().all(|&v| v == 1.0));
        assert!(t("encoder_norm.bias").values.iter().all(|&v| v == 0.0));
        for k in [
            "diffloss.net.res_blocks.0.adaLN_modulation.1.weight",
            "diffloss.net.final_layer.adaLN_modulation.1.weight",
            "diffloss.net.final_layer.linear.weight",
        ] {
            assert!(t(k).values.iter().all(|&v| v == 0.0), "{k}");
        }
        // The time MLP ~ N(0, 0.02²).
        let s = std(&t("diffloss.net.time_embed.mlp.0.weight").values);
        assert!((s - 0.02).abs() < 0.002, "time MLP std {s}");
    }

    #[test]
    fn a_linear_loads_as_in_out_and_exports_as_out_in_under_its_name() {
        let device = Device::flex();
        // PyTorch's `[out = 2, in = 3]`.
        let official = HostTensor {
            shape: vec![2, 3],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let bias = HostTensor {
            shape: vec![2],
            values: vec![0.5, -0.5],
        };
        let mut w = WeightMap::default();
        w.tensors.insert("lin.weight".into(), official.clone());
        w.tensors.insert("lin.bias".into(), bias.clone());
        let mut p = ParamBuilder::new(&mut w, &device);
        let linear = p.linear("lin", 3, 2, Init::Pretrained).unwrap();
        assert_eq!(linear.weight.dims(), [3, 2]);
        let y = linear.forward(Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0], [1, 3]),
            &device,
        ));
        // x·Wᵀ + b with x = e₀: the first input column of W, plus the bias.
        assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![1.5, 3.5]);
        let mut names = ParamNames::default();
        p.name_params("m", &linear, &mut names).unwrap();
        let mut out = BTreeMap::new();
        names.export("m", &linear, &mut out).unwrap();
        assert_eq!(out["lin.weight"], official);
        assert_eq!(out["lin.bias"], bias);
    }

    #[test]
    fn a_parameter_built_outside_the_builder_is_an_internal_error() {
        let device = Device::flex();
        let mut init = Initializer::new(0);
        let mut p = ParamBuilder::new(&mut init, &device);
        let mut ln = crate::model::layers::LayerNorm::build(&mut p, "norm", 4).unwrap();
        let mut names = ParamNames::default();
        p.name_params("ok", &ln, &mut names).unwrap();
        // Exported only under the path it was named at.
        let err = names
            .export("elsewhere", &ln, &mut BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, DisaError::Internal(_)), "{err}");
        ln.bias = Some(Param::from_tensor(Tensor::zeros([4], &device)));
        let err = p.name_params("bad", &ln, &mut names).unwrap_err();
        assert!(matches!(err, DisaError::Internal(_)), "{err}");
        assert!(err.to_string().contains("bad.bias"), "{err}");
    }

    #[test]
    fn a_pretrained_only_tensor_is_never_initialized() {
        let err = Initializer::new(0)
            .tensor("decoder.conv_in.weight", &[4, 4, 3, 3], Init::Pretrained)
            .unwrap_err();
        assert!(matches!(err, DisaError::Internal(_)), "{err}");
    }
}
