//! The student's optimizers as the official trainer sets them up: the two parameter groups of
//! `utils.get_params_groups`, and `torch.optim.AdamW` (the default for ViTs),
//! `torch.optim.SGD(momentum=0.9)` and `utils.LARS`, with the learning rate and weight decay
//! set on the groups every iteration from the schedules.
//!
//! Each update follows the reference implementation operation by operation (torch's
//! single-tensor code path, the one it takes on CPU), so that a step on CPU matches
//! `torch.optim.AdamW` to a unit or so in the last place. State is kept per parameter and
//! exported under `"{param_name}.{key}"` names, torch's own state keys, for checkpoints and
//! exact resume. AdamW can run over flat buffers instead ([`Optimizer::use_flat_buffer`],
//! module `flat`), with the same values and the same exported state.

mod flat;
mod update;

use std::collections::{BTreeMap, HashMap};

use tch::Tensor;

use crate::algo_error::AlgoError;
use crate::clip::CancelledGrads;
use crate::flat::FlatBuffer;
use update::{adamw_update, init_state, lars_update, sgd_update};

/// Official rule of `get_params_groups`: biases and all 1-D parameters (LayerNorm weights)
/// are not weight-decayed; matrices and the 3-D tokens and position embedding are.
pub fn is_regularized(name: &str, shape: &[i64]) -> bool {
    !(name.ends_with(".bias") || shape.len() == 1)
}

/// The two groups of official `utils.get_params_groups`: group 0 gets the scheduled weight
/// decay, group 1 none.
#[derive(Debug, Default)]
pub struct ParamGroups {
    pub regularized: Vec<(String, Tensor)>,
    pub not_regularized: Vec<(String, Tensor)>,
}

/// Splits trainable parameters (those that do not require a gradient are left out, as in the
/// official code) into the regularised and the non-regularised group. The optimizer updates
/// the very tensors given (pass shallow clones to keep handles).
pub fn get_params_groups(params: impl IntoIterator<Item = (String, Tensor)>) -> ParamGroups {
    let mut groups = ParamGroups::default();
    for (name, t) in params {
        if !t.requires_grad() {
            continue;
        }
        if is_regularized(&name, &t.size()) {
            groups.regularized.push((name, t));
        } else {
            groups.not_regularized.push((name, t));
        }
    }
    groups
}

/// Shallow handles of named tensors (same storage, same autograd leaf).
pub fn shallow(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// Which optimizer (official `--optimizer`; names, parsing and serde from `ValueEnum`, see
/// `config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum OptimizerKind {
    /// torch.optim.AdamW (the default for ViTs)
    AdamW,
    /// torch.optim.SGD with momentum
    Sgd,
    /// the official utils.LARS
    Lars,
}

impl OptimizerKind {
    /// torch's names of the per-parameter state tensors (AdamW also has a per-parameter
    /// `step`, exported separately).
    fn state_keys(self) -> &'static [&'static str] {
        match self {
            Self::AdamW => &["exp_avg", "exp_avg_sq"],
            Self::Sgd => &["momentum_buffer"],
            Self::Lars => &["mu"],
        }
    }
}

/// torch.optim.AdamW defaults (the official code passes none).
pub const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAMW_EPS: f64 = 1e-8;
/// Momentum of the official SGD and LARS.
pub const MOMENTUM: f64 = 0.9;
/// LARS trust coefficient (official default).
pub const LARS_ETA: f64 = 0.001;
/// Name of the optimizer-wide step counter in [`Optimizer::state_tensors`].
pub const STEP_COUNT_KEY: &str = "step_count";

#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    regularized: bool,
    /// Empty until the first step that updates this parameter (torch creates state lazily).
    state: Vec<Tensor>,
    /// Updates applied to this parameter (torch's per-parameter `step`; parameters whose
    /// gradient was cancelled do not advance).
    step: i64,
}

/// One of the official optimizers over the two parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    slots: Vec<Slot>,
    step_count: i64,
    /// AdamW over flat buffers, once [`Optimizer::use_flat_buffer`] accepted a layout.
    flat: Option<flat::FlatAdamW>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, groups: ParamGroups) -> Self {
        let slot = |regularized: bool| {
            move |(name, param): (String, Tensor)| Slot {
                name,
                param,
                regularized,
                state: Vec::new(),
                step: 0,
            }
        };
        let slots = groups
            .regularized
            .into_iter()
            .map(slot(true))
            .chain(groups.not_regularized.into_iter().map(slot(false)))
            .collect();
        Self {
            kind,
            slots,
            step_count: 0,
            flat: None,
        }
    }

    /// Runs AdamW segment-wise over `flat`, the buffer the parameters are views of (laid out
    /// by [`FlatBuffer::order_key`]): a few kernels per
    /// segment instead of ~10 per parameter, same values. Returns whether the layout applies;
    /// if not (another optimizer, a parameter outside `flat`, a segment not contiguous) the
    /// per-parameter path stays. Existing state moves into the flat moments.
    pub fn use_flat_buffer(&mut self, flat: &FlatBuffer) -> Result<bool, AlgoError> {
        if self.kind != OptimizerKind::AdamW {
            return Ok(false);
        }
        let Some(f) = flat::FlatAdamW::new(flat, &self.slots)? else {
            return Ok(false);
        };
        for (i, s) in self.slots.iter_mut().enumerate() {
            if !s.state.is_empty() {
                s.state = f.adopt(i, &s.param, &s.state)?;
            }
        }
        self.flat = Some(f);
        Ok(true)
    }

    /// Whether AdamW runs over flat buffers (see [`Optimizer::use_flat_buffer`]).
    pub fn is_flat(&self) -> bool {
        self.flat.is_some()
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Number of [`Optimizer::step`] calls so far (restored by [`Optimizer::load_state`]).
    pub fn step_count(&self) -> i64 {
        self.step_count
    }

    /// The parameter names, group 0 first.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Zeroes the gradients in place (tch cannot set a gradient back to undefined; zeroed
    /// gradients accumulate the same).
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One update with learning rate `lr` for both groups and weight decay `wd` for the
    /// regularised group (the official loop sets `param_groups[i]["lr"] = lr_schedule[it]`
    /// and `param_groups[0]["weight_decay"] = wd_schedule[it]`). Parameters without a
    /// gradient, and those in `cancelled` (the official code sets their `grad` to `None`),
    /// are skipped entirely: no decay, no state change.
    pub fn step(&mut self, lr: f64, wd: f64, cancelled: &CancelledGrads) -> Result<(), AlgoError> {
        let kind = self.kind;
        tch::no_grad(|| -> Result<(), AlgoError> {
            if let Some(flat) = &self.flat {
                return flat.step(&mut self.slots, cancelled, lr, wd);
            }
            for s in &mut self.slots {
                if cancelled.contains(&s.name) {
                    continue;
                }
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                if s.state.is_empty() {
                    s.state = init_state(kind, &s.param, &grad)?;
                }
                s.step += 1;
                let wd = if s.regularized { wd } else { 0.0 };
                let mut p = s.param.shallow_clone();
                match kind {
                    OptimizerKind::AdamW => {
                        adamw_update(&mut p, &grad, &mut s.state, s.step, lr, wd)?
                    }
                    OptimizerKind::Sgd => sgd_update(&mut p, &grad, &mut s.state, s.step, lr, wd)?,
                    OptimizerKind::Lars => lars_update(&mut p, &grad, &mut s.state, lr, wd)?,
                }
            }
            Ok(())
        })?;
        self.step_count += 1;
        Ok(())
    }

    /// The whole optimizer state as named tensors (shallow handles; copy before mutating):
    /// `"{param}.{key}"` for torch's state keys, `"{param}.step"` (int64, AdamW's bias
    /// correction counter) and [`STEP_COUNT_KEY`].
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(STEP_COUNT_KEY.to_string(), Tensor::from(self.step_count))];
        for s in self.slots.iter().filter(|s| !s.state.is_empty()) {
            for (key, t) in self.kind.state_keys().iter().zip(&s.state) {
                out.push((format!("{}.{key}", s.name), t.shallow_clone()));
            }
            if self.kind == OptimizerKind::AdamW {
                out.push((format!("{}.step", s.name), Tensor::from(s.step)));
            }
        }
        out
    }

    /// Restores a state written by [`Optimizer::state_tensors`] (tensors are copied to each
    /// parameter's device and dtype). Every key must name a parameter of this optimizer and a
    /// state of its kind, with the parameter's shape; a parameter absent from `state` starts
    /// fresh, as in torch.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), AlgoError> {
        let keys = self.kind.state_keys();
        let index: HashMap<&str, usize> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut step_count = None;
        let mut found: BTreeMap<usize, (Vec<Option<Tensor>>, Option<i64>)> = BTreeMap::new();
        for (key, t) in state {
            if key == STEP_COUNT_KEY {
                step_count = Some(scalar_i64(key, t)?);
                continue;
            }
            let (name, what) = key
                .rsplit_once('.')
                .ok_or_else(|| AlgoError::state(key, "not of the form `{param}.{state}`"))?;
            let &i = index
                .get(name)
                .ok_or_else(|| AlgoError::state(key, "no such parameter in this optimizer"))?;
            let entry = found
                .entry(i)
                .or_insert_with(|| ((0..keys.len()).map(|_| None).collect(), None));
            if what == "step" && self.kind == OptimizerKind::AdamW {
                entry.1 = Some(scalar_i64(key, t)?);
            } else if let Some(k) = keys.iter().position(|k| *k == what) {
                let p = &self.slots[i].param;
                if t.size() != p.size() {
                    return Err(AlgoError::state(
                        key,
                        format!("shape {:?}, the parameter has {:?}", t.size(), p.size()),
                    ));
                }
                entry.0[k] = Some(
                    t.f_to_device(p.device())?
                        .f_to_kind(p.kind())?
                        .f_detach_copy()?,
                );
            } else {
                return Err(AlgoError::state(
                    key,
                    format!("not a {:?} state", self.kind),
                ));
            }
        }
        let step_count = step_count.ok_or_else(|| AlgoError::state(STEP_COUNT_KEY, "missing"))?;
        let mut restored = Vec::with_capacity(found.len());
        for (i, (tensors, step)) in found {
            let name = &self.slots[i].name;
            let tensors: Option<Vec<Tensor>> = tensors.into_iter().collect();
            let tensors = tensors
                .ok_or_else(|| AlgoError::state(name, format!("incomplete: needs {keys:?}")))?;
            let step = match self.kind {
                OptimizerKind::AdamW => {
                    step.ok_or_else(|| AlgoError::state(name, "incomplete: needs `step`"))?
                }
                // SGD and LARS keep no counter; any state means at least one update.
                _ => 1,
            };
            restored.push((i, tensors, step));
        }
        for s in &mut self.slots {
            s.state.clear();
            s.step = 0;
        }
        if let Some(flat) = &self.flat {
            flat.zero_state()?;
        }
        for (i, tensors, step) in restored {
            let s = &mut self.slots[i];
            s.state = match &self.flat {
                Some(flat) => flat.adopt(i, &s.param, &tensors)?,
                None => tensors,
            };
            s.step = step;
        }
        self.step_count = step_count;
        Ok(())
    }
}

fn scalar_i64(key: &str, t: &Tensor) -> Result<i64, AlgoError> {
    if t.numel() != 1 {
        return Err(AlgoError::state(key, "expected a single number"));
    }
    let v = t.f_double_value(&[])?;
    if v.fract() != 0.0 || v < 0.0 {
        return Err(AlgoError::state(key, format!("{v} is not a step count")));
    }
    Ok(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_official_rule() {
        assert!(is_regularized("blocks.0.attn.qkv.weight", &[3, 4]));
        assert!(!is_regularized("blocks.0.attn.qkv.bias", &[3]));
        assert!(!is_regularized("norm.weight", &[4]));
        assert!(is_regularized("cls_token", &[1, 1, 4]));
    }

    #[test]
    fn unknown_optimizer_is_an_error() {
        assert!("adam".parse::<OptimizerKind>().is_err());
        assert_eq!(
            "lars".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Lars
        );
    }
}
