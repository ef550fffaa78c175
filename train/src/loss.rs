//! The DINO self-distillation loss (official `main_dino.DINOLoss`) and the teacher-entropy
//! diagnostics used to detect collapse (paper section 5.3, figure 7).
//!
//! The student sees all `n_crops` views (2 global + local), the teacher only the 2 global
//! views. The teacher output is centred (the running `center` avoids collapse to one
//! dimension) and sharpened by a low temperature (which avoids collapse to the uniform
//! distribution); the loss is the cross-entropy between teacher and student distributions
//! over every pair of different views.

use tch::{Kind, Tensor};

use crate::algo_error::AlgoError;
use crate::config::TeacherConfig;

/// Official `DINOLoss`: owns the running center (a `(1, out_dim)` fp32 buffer that belongs
/// in checkpoints) and the teacher temperature schedule.
#[derive(Debug)]
pub struct DinoLoss {
    /// The student temperature and the center momentum.
    cfg: TeacherConfig,
    out_dim: usize,
    /// Total number of crops: 2 global + `local_crops_number`.
    ncrops: usize,
    /// Teacher temperature per epoch ([`crate::schedule::teacher_temp_schedule`]).
    teacher_temp_schedule: Vec<f64>,
    center: Tensor,
    /// Sums the batch centre over the processes of a multi-process run.
    reducer: Option<std::rc::Rc<dyn CenterReducer>>,
}

/// What the centre update needs of a multi-process run (official: `dist.all_reduce` of
/// the batch centre, then a division by the world size).
pub trait CenterReducer {
    /// Sums `t` over every process, in place.
    fn sum_(&self, t: &Tensor) -> Result<(), AlgoError>;
    fn world_size(&self) -> usize;
}

impl std::fmt::Debug for dyn CenterReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CenterReducer(world {})", self.world_size())
    }
}

impl DinoLoss {
    /// The loss of `cfg` over `ncrops` views of `out_dim` logits, with the teacher
    /// temperature of each epoch from `teacher_temp_schedule`.
    pub fn new(
        cfg: &TeacherConfig,
        out_dim: usize,
        ncrops: usize,
        teacher_temp_schedule: Vec<f64>,
        device: tch::Device,
    ) -> Result<Self, AlgoError> {
        if ncrops < 2 {
            return Err(AlgoError::LossShape(format!(
                "ncrops is {ncrops}, but DINO needs at least the 2 global crops"
            )));
        }
        if out_dim == 0 || teacher_temp_schedule.is_empty() {
            return Err(AlgoError::LossShape(
                "out_dim and the teacher temperature schedule must not be empty".into(),
            ));
        }
        let center = Tensor::f_zeros([1, out_dim as i64], (Kind::Float, device))?;
        Ok(Self {
            cfg: cfg.clone(),
            out_dim,
            ncrops,
            teacher_temp_schedule,
            center,
            reducer: None,
        })
    }

    /// Takes the centre's batch mean over every process of a multi-process run.
    pub fn reduce_center_with(&mut self, reducer: std::rc::Rc<dyn CenterReducer>) {
        self.reducer = Some(reducer);
    }

    /// The running center of the teacher logits, `(1, out_dim)`, fp32.
    pub fn center(&self) -> &Tensor {
        &self.center
    }

    /// Restores the center (from a checkpoint); it is copied, fp32, on the center's device.
    pub fn set_center(&mut self, center: &Tensor) -> Result<(), AlgoError> {
        let want = [1, self.out_dim as i64];
        if center.size() != want {
            return Err(AlgoError::LossShape(format!(
                "center has shape {:?}, expected {want:?}",
                center.size()
            )));
        }
        self.center = center
            .f_to_kind(Kind::Float)?
            .f_to_device(self.center.device())?
            .f_detach_copy()?;
        Ok(())
    }

    /// The teacher temperature of `epoch`; an epoch past the schedule is an error (an index
    /// error in the official code too).
    pub fn teacher_temp(&self, epoch: usize) -> Result<f64, AlgoError> {
        self.teacher_temp_schedule
            .get(epoch)
            .copied()
            .ok_or_else(|| {
                AlgoError::LossShape(format!(
                    "epoch {epoch} is past the {}-epoch teacher temperature schedule",
                    self.teacher_temp_schedule.len()
                ))
            })
    }

    /// Official `DINOLoss.forward`: the mean cross-entropy `-q * log_softmax(s_v)` between the
    /// sharpened, centred teacher output of global view `iq` and the student output of every
    /// other view `v != iq`; then the center update. Logits may come in reduced precision;
    /// everything is computed in fp32.
    ///
    /// `student_output`: `(ncrops * B, out_dim)`, crops stacked view by view;
    /// `teacher_output`: `(2 * B, out_dim)`.
    pub fn forward(
        &mut self,
        student_output: &Tensor,
        teacher_output: &Tensor,
        epoch: usize,
    ) -> Result<Tensor, AlgoError> {
        self.check_shapes(student_output, teacher_output)?;
        let temp = self.teacher_temp(epoch)?;
        let student = student_output.f_to_kind(Kind::Float)?;
        let teacher = teacher_output.f_to_kind(Kind::Float)?;

        let (n, d) = (self.ncrops as i64, self.out_dim as i64);
        let b_rows = teacher.size()[0] / 2;
        // One log-softmax over all views instead of one per (teacher, student) pair: with
        // 12 crops and the official out_dim the per-pair form recomputes it 22 times.
        let log_p = student
            .f_div_scalar(self.cfg.student_temp)?
            .f_log_softmax(-1, Kind::Float)?
            .f_view([n, b_rows, d])?; // [views, B, out_dim]
        // Teacher centering and sharpening; no gradient flows to the teacher.
        let q = self
            .teacher_probs(&teacher, temp)?
            .f_detach()?
            .f_view([2, b_rows, d])?; // [2, B, out_dim]

        // The sum over pairs (iq, v != iq) of <q_iq, log_p_v> is
        // <q_0 + q_1, sum_v log_p_v> - <q_0, log_p_0> - <q_1, log_p_1>.
        let all_pairs = q
            .f_sum_dim_intlist(0, false, Kind::Float)?
            .f_mul(&log_p.f_sum_dim_intlist(0, false, Kind::Float)?)?;
        let same_view =
            q.f_mul(&log_p.f_narrow(0, 0, 2)?)?
                .f_sum_dim_intlist(0, false, Kind::Float)?;
        let n_loss_terms = 2 * n - 2;
        // Per-image cross-entropies, averaged over the batch as each official term is.
        let total = all_pairs
            .f_sub(&same_view)?
            .f_sum_dim_intlist(-1, false, Kind::Float)?
            .f_mean(Kind::Float)?
            .f_neg()?
            .f_div_scalar(n_loss_terms)?;
        self.update_center(&teacher)?;
        Ok(total)
    }

    /// `softmax((teacher_output - center) / temp)`, fp32.
    pub fn teacher_probs(&self, teacher_output: &Tensor, temp: f64) -> Result<Tensor, AlgoError> {
        Ok(teacher_output
            .f_to_kind(Kind::Float)?
            .f_sub(&self.center)?
            .f_div_scalar(temp)?
            .f_softmax(-1, Kind::Float)?)
    }

    /// Official `DINOLoss.update_center`: `center = center * m + mean(teacher) * (1 - m)`, the
    /// batch mean taken as a sum divided by the row count (over every process when a
    /// [`CenterReducer`] is set: the sum all-reduced, divided by `rows * world_size`).
    pub fn update_center(&mut self, teacher_output: &Tensor) -> Result<(), AlgoError> {
        let m = self.cfg.center_momentum;
        let center = tch::no_grad(|| -> Result<Tensor, AlgoError> {
            let t = teacher_output.f_to_kind(Kind::Float)?;
            let mut rows = t.size()[0];
            let sum = t.f_sum_dim_intlist(0, true, Kind::Float)?;
            if let Some(r) = &self.reducer {
                r.sum_(&sum)?;
                rows *= r.world_size() as i64;
            }
            let batch_center = sum.f_div_scalar(rows)?;
            Ok(self
                .center
                .f_mul_scalar(m)?
                .f_add(&batch_center.f_mul_scalar(1.0 - m)?)?)
        })?;
        self.center = center;
        Ok(())
    }

    /// Collapse diagnostics of the teacher output at `epoch`'s temperature, with the current
    /// center (call before [`DinoLoss::forward`] to see what the loss saw).
    pub fn teacher_stats(
        &self,
        teacher_output: &Tensor,
        epoch: usize,
    ) -> Result<TeacherStats, AlgoError> {
        let temp = self.teacher_temp(epoch)?;
        tch::no_grad(|| teacher_stats(&self.teacher_probs(teacher_output, temp)?))
    }

    fn check_shapes(&self, student: &Tensor, teacher: &Tensor) -> Result<(), AlgoError> {
        let (s, t) = (student.size(), teacher.size());
        let d = self.out_dim as i64;
        let n = self.ncrops as i64;
        if s.len() != 2 || t.len() != 2 || s[1] != d || t[1] != d {
            return Err(AlgoError::LossShape(format!(
                "student {s:?} and teacher {t:?} outputs must be (rows, {d})"
            )));
        }
        if t[0] == 0 || t[0] % 2 != 0 || s[0] != t[0] / 2 * n {
            return Err(AlgoError::LossShape(format!(
                "teacher has {} rows (2 global views of B images) and student {} rows; expected 2*B and {n}*B",
                t[0], s[0]
            )));
        }
        Ok(())
    }
}

/// Entropy statistics of teacher distributions (rows of `probs`), in nats.
///
/// The DINO paper monitors the teacher entropy to tell the two collapse modes apart: a
/// teacher collapsed to the uniform distribution has entropy `ln(out_dim)` (which is also the
/// loss of a uniform student), one collapsed to a single dimension has entropy 0 for every
/// image and for the batch mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeacherStats {
    /// Mean over images of `-sum p log p`.
    pub entropy: f64,
    /// Entropy of the batch-mean distribution: low when every image picks the same dimension.
    pub mean_entropy: f64,
    /// `ln(out_dim)`, the upper bound of both entropies.
    pub max_entropy: f64,
}

/// [`TeacherStats`] of a `(rows, out_dim)` tensor of probabilities (`0 * log 0` counts as 0).
pub fn teacher_stats(probs: &Tensor) -> Result<TeacherStats, AlgoError> {
    let size = probs.size();
    if size.len() != 2 || size[0] == 0 {
        return Err(AlgoError::LossShape(format!(
            "teacher probabilities must be (rows, out_dim), got {size:?}"
        )));
    }
    let p = probs.f_to_kind(Kind::Float)?;
    let entropy = |p: &Tensor| -> Result<Tensor, AlgoError> {
        // xlogy(p, p) is 0 where p == 0, as the limit of p ln p.
        Ok(p.f_xlogy(p)?
            .f_sum_dim_intlist(-1, false, Kind::Float)?
            .f_neg()?)
    };
    let per_image = entropy(&p)?.f_mean(Kind::Float)?.f_double_value(&[])?;
    let mean_p = p.f_mean_dim(0, false, Kind::Float)?;
    let of_mean = entropy(&mean_p)?.f_double_value(&[])?;
    Ok(TeacherStats {
        entropy: per_image,
        mean_entropy: of_mean,
        max_entropy: max_entropy(size[1] as usize),
    })
}

/// `ln(out_dim)`: the entropy of the uniform distribution, hence the loss (cross-entropy) of
/// a student that predicts it, and the bound of the teacher entropy.
pub fn max_entropy(out_dim: usize) -> f64 {
    (out_dim as f64).ln()
}
