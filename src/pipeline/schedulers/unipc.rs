//! The UniPC multistep solver (UniP predictor, UniC corrector, B(h) variants `bh1`/`bh2`,
//! `predict_x0`, flow sigmas, `lower_order_final`, `disable_corrector`) as host-side `f64`
//! coefficients, and the one place that applies them to tensors ([`SolverHistory`]).
//!
//! Written once for the two diffusers classes that carry the same algorithm:
//! `schedulers/scheduling_unipc_multistep.py` `UniPCMultistepScheduler` (`step`,
//! `convert_model_output`, `multistep_uni_p_bh_update`, `multistep_uni_c_bh_update`,
//! `_sigma_to_alpha_sigma_t`) and `schedulers/scheduling_helios.py` `HeliosScheduler.step_unipc`
//! (its copy of the same functions). The only difference between the two is the flow-sigma
//! clamp of `_sigma_to_alpha_sigma_t` (Helios: `sigma_t = clamp(σ, min=1e-8)`; UniPC: none),
//! which is [`UniPcOptions::flow_sigma_clamp`].
//!
//! # The UniPC step as a linear combination
//! Step `i` gets the latents `x_i` (what the model saw) and the model output `v_i` (flow velocity),
//! and keeps three tensors from earlier steps: `last` (the corrected sample of step `i − 1`, the
//! input of its predictor, diffusers `self.last_sample`) and the two previous data predictions
//! `x0_{i−1}`, `x0_{i−2}` (diffusers `self.model_outputs`). With the scalars of [`UniPcStep`]:
//! ```text
//! x0_i  = x_i − sigma·v_i                                              # convert_model_output
//! x_i^c = c.last·last + c.x0[0]·x0_i + c.x0[1]·x0_{i−1} + c.x0[2]·x0_{i−2}   # multistep_uni_c_bh_update (i > 0)
//! x_i^c = x_i                                                          # no corrector (i = 0)
//! x_{i+1} = p.sample·x_i^c + p.x0[0]·x0_i + p.x0[1]·x0_{i−1}           # multistep_uni_p_bh_update
//! then: last ← x_i^c, x0_{i−2} ← x0_{i−1}, x0_{i−1} ← x0_i
//! ```
//! A zero coefficient (order-1 terms, a missing history entry) means "leave the term out"; the
//! terms that need a tensor the history does not have yet are always zero.
//!
//! Only `predict_x0 = true` with `prediction_type = "flow_prediction"` and `solver_order ≤ 2` is
//! ported (what every Helios and Wan checkpoint uses); the schedulers reject the rest at
//! construction.

use serde::Deserialize;

/// `solver_type` of the UniPC B(h) function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverType {
    /// `B(h) = h` (with `h` the signed step, `−h` under `predict_x0`).
    Bh1,
    /// `B(h) = expm1(h)` (the default). diffusers maps `midpoint`, `heun` and `logrho` to `bh2`
    /// (with a `register_to_config`), so they are accepted as aliases.
    #[serde(alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

/// The scalars of one scheduler step; see the module docs for how the tensors combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepPlan {
    /// `step_euler`.
    Euler(EulerStep),
    /// `step_unipc`.
    UniPc(UniPcStep),
}

/// diffusers `HeliosScheduler.step_euler` / `FlowMatchEulerDiscreteScheduler.step`: `x_{i+1} = x_i + dt·v_i` (`x_i` upcast to f32, result cast to the
/// model-output dtype).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EulerStep {
    /// `sigmas[i + 1] − sigmas[i]` (negative).
    pub dt: f64,
}

/// diffusers `step_unipc` / `UniPCMultistepScheduler.step` at step `i`:
/// ```text
/// x0_i    = x_i − sigma·v_i
/// x_i^c   = corrector.last·last + Σ_k corrector.x0[k]·x0_{i−k}      (if corrector is Some)
/// x_{i+1} = predictor.sample·x_i^c + Σ_k predictor.x0[k]·x0_{i−k}
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPcStep {
    /// Step index `i`.
    pub step_index: usize,
    /// `sigmas[i]` of `convert_model_output` (`x0 = sample − sigma·model_output`).
    pub sigma: f64,
    /// `multistep_uni_c_bh_update`, present for `i > 0` unless `disable_corrector` holds `i − 1`.
    pub corrector: Option<UniCCoeffs>,
    /// `multistep_uni_p_bh_update`.
    pub predictor: UniPCoeffs,
}

/// Corrector weights: `x_i^c = last·x_{i−1}^c + x0[0]·x0_i + x0[1]·x0_{i−1} + x0[2]·x0_{i−2}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniCCoeffs {
    /// UniC order `p` (= the previous predictor's order); `x0[2]` is 0 unless `p = 2`.
    pub order: usize,
    /// Weight of `last`, the corrected sample of step `i − 1` (`σ̂_i / σ̂_{i−1}`).
    pub last: f64,
    /// Weights of `x0_i`, `x0_{i−1}`, `x0_{i−2}`.
    pub x0: [f64; 3],
}

/// Predictor weights: `x_{i+1} = sample·x_i^c + x0[0]·x0_i + x0[1]·x0_{i−1}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniPCoeffs {
    /// UniP order `p` (1 or 2); `x0[1]` is 0 unless `p = 2`.
    pub order: usize,
    /// Weight of the (corrected) sample `x_i^c` (`σ̂_{i+1} / σ̂_i`).
    pub sample: f64,
    /// Weights of `x0_i`, `x0_{i−1}`.
    pub x0: [f64; 2],
}

/// `_sigma_to_alpha_sigma_t`.
fn alpha_sigma(use_flow_sigmas: bool, clamp: Option<f64>, sigma: f64) -> (f64, f64) {
    if use_flow_sigmas {
        (1.0 - sigma, clamp.map_or(sigma, |m| sigma.max(m)))
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

/// `torch.log(alpha_t) − torch.log(sigma_t)`.
fn lambda(alpha_sigma: (f64, f64)) -> f64 {
    alpha_sigma.0.ln() - alpha_sigma.1.ln()
}

/// `hh = −h` (predict_x0), `h_phi_1 = expm1(hh)`, `B_h`, and the `b` vector of the UniPC
/// `R·ρ = b` system for `order` (the loop over `h_phi_k` / `factorial_i` in diffusers).
fn phi_terms(solver_type: SolverType, h: f64, order: usize) -> (f64, f64, Vec<f64>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = match solver_type {
        SolverType::Bh1 => hh,
        SolverType::Bh2 => hh.exp_m1(),
    };
    let mut factorial_i = 1.0;
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        b.push(h_phi_k * factorial_i / b_h);
        factorial_i *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial_i;
    }
    (h_phi_1, b_h, b)
}

/// The solver options [`UniPcPlanner`] reads (a view of the scheduler config).
#[derive(Debug, Clone, PartialEq)]
pub struct UniPcOptions {
    /// `solver_order`, 1 or 2.
    pub solver_order: usize,
    /// `solver_type`.
    pub solver_type: SolverType,
    /// `lower_order_final`.
    pub lower_order_final: bool,
    /// `disable_corrector`.
    pub disable_corrector: Vec<usize>,
    /// `use_flow_sigmas`: `alpha = 1 − σ`, `sigma = σ` (else the VP mapping).
    pub use_flow_sigmas: bool,
    /// `Some(m)`: `sigma_t = max(σ, m)` under flow sigmas (`HeliosScheduler`, `m = 1e-8`);
    /// `None`: no clamp (`UniPCMultistepScheduler`; the last step then has `λ = +∞`,
    /// `expm1(−∞) = −1`, exactly as in torch).
    pub flow_sigma_clamp: Option<f64>,
}

/// diffusers' solver bookkeeping (`_step_index`, `lower_order_nums`, `this_order`) as scalars;
/// one per `set_timesteps` (a fresh planner is diffusers' history reset).
#[derive(Debug, Clone)]
pub struct UniPcPlanner {
    options: UniPcOptions,
    /// The step `plan` expects next (diffusers `_step_index`).
    next_step: usize,
    /// diffusers `lower_order_nums`.
    lower_order_nums: usize,
    /// diffusers `this_order` of the last predictor (0 before the first step).
    this_order: usize,
    /// The first step planned ([`begin_at`](Self::begin_at); 0 from the start): diffusers runs
    /// no corrector there (`last_sample is None`).
    first_step: usize,
}

impl UniPcPlanner {
    /// A planner at step 0 with an empty history.
    pub fn new(options: UniPcOptions) -> Self {
        Self {
            options,
            next_step: 0,
            lower_order_nums: 0,
            this_order: 0,
            first_step: 0,
        }
    }

    /// Start a fresh planner at step `i` instead of 0, as diffusers' image/video-to-video
    /// pipelines do by truncating `timesteps` (`get_timesteps(strength)`): the first planned
    /// step is `i`, with an empty history (no corrector, first-order predictor).
    ///
    /// # Panics
    /// If a step was planned already.
    pub fn begin_at(&mut self, i: usize) {
        assert!(
            self.next_step == self.first_step && self.this_order == 0,
            "begin_at after planning"
        );
        self.next_step = i;
        self.first_step = i;
    }

    /// The scalars of step `i` over `sigmas: [n + 1]` (diffusers `step`), advancing the
    /// history.
    ///
    /// # Panics
    /// If `i` is not the next step (steps must be planned in order `0, 1, …, n − 1`, once each).
    pub fn plan(&mut self, sigmas: &[f64], i: usize) -> UniPcStep {
        assert!(
            i == self.next_step && i + 1 < sigmas.len(),
            "step_plan: expected step {} of {}, got {i}",
            self.next_step,
            sigmas.len().saturating_sub(1)
        );
        self.next_step += 1;
        self.unipc_step(sigmas, i)
    }

    fn unipc_step(&mut self, sig: &[f64], i: usize) -> UniPcStep {
        let c = &self.options;
        let a_s = |k: usize| alpha_sigma(c.use_flow_sigmas, c.flow_sigma_clamp, sig[k]);
        let to_f32 = |x: f64| (x as f32) as f64; // `.to(x.dtype)` of rhos_c

        // Corrector (multistep_uni_c_bh_update), order = the previous predictor's.
        let use_corrector = i > self.first_step && !c.disable_corrector.contains(&(i - 1));
        let corrector = use_corrector.then(|| {
            let order = self.this_order;
            let (alpha_t, sigma_t) = a_s(i);
            let (alpha_s0, sigma_s0) = a_s(i - 1);
            let lambda_t = lambda((alpha_t, sigma_t));
            let lambda_s0 = lambda((alpha_s0, sigma_s0));
            let h = lambda_t - lambda_s0;
            let rk = (order == 2).then(|| (lambda(a_s(i - 2)) - lambda_s0) / h);
            let (h_phi_1, b_h, b) = phi_terms(c.solver_type, h, order);
            // rhos_c: [0.5] for order 1, else torch.linalg.solve(R, b), R = [[1, 1], [rk, 1]].
            let (rho_d1, rho_t) = match rk {
                None => (0.0, 0.5),
                Some(rk) => {
                    let (r0, r1) = solve2([[1.0, 1.0], [rk, 1.0]], [b[0], b[1]]);
                    (to_f32(r0), to_f32(r1))
                }
            };
            // x_t = σ_t/σ_s0·x − α_t·h_phi_1·m0 − α_t·B_h·(ρ0·(m1 − m0)/rk + ρ_t·(model_t − m0))
            let k = alpha_t * b_h;
            let d1 = rk.map_or(0.0, |rk| rho_d1 / rk);
            UniCCoeffs {
                order,
                last: sigma_t / sigma_s0,
                x0: [-k * rho_t, -alpha_t * h_phi_1 + k * d1 + k * rho_t, -k * d1],
            }
        });

        // Predictor (multistep_uni_p_bh_update).
        let n = sig.len() - 1;
        let order = if c.lower_order_final {
            c.solver_order.min(n - i)
        } else {
            c.solver_order
        };
        let order = order.min(self.lower_order_nums + 1);
        self.this_order = order;
        if self.lower_order_nums < c.solver_order {
            self.lower_order_nums += 1;
        }
        let (alpha_t, sigma_t) = a_s(i + 1);
        let (alpha_s0, sigma_s0) = a_s(i);
        let lambda_s0 = lambda((alpha_s0, sigma_s0));
        let h = lambda((alpha_t, sigma_t)) - lambda_s0;
        let (h_phi_1, b_h, _) = phi_terms(c.solver_type, h, order);
        // x_t = σ_t/σ_s0·x − α_t·h_phi_1·m0 − α_t·B_h·0.5·(m1 − m0)/rk
        let d1 = if order == 2 {
            let rk = (lambda(a_s(i - 1)) - lambda_s0) / h;
            0.5 / rk
        } else {
            0.0
        };
        let k = alpha_t * b_h;
        let predictor = UniPCoeffs {
            order,
            sample: sigma_t / sigma_s0,
            x0: [-alpha_t * h_phi_1 + k * d1, -k * d1],
        };

        UniPcStep {
            step_index: i,
            sigma: sig[i],
            corrector,
            predictor,
        }
    }
}

/// Solves the 2×2 system `a·x = b` like LAPACK `gesv` (LU with partial pivoting), which
/// `torch.linalg.solve` calls on CPU.
fn solve2(a: [[f64; 2]; 2], b: [f64; 2]) -> (f64, f64) {
    let (r0, r1, b0, b1) = if a[1][0].abs() > a[0][0].abs() {
        (a[1], a[0], b[1], b[0])
    } else {
        (a[0], a[1], b[0], b[1])
    };
    let l = r1[0] / r0[0];
    let u11 = r1[1] - l * r0[1];
    let y1 = b1 - l * b0;
    let x1 = y1 / u11;
    let x0 = (b0 - r0[1] * x1) / r0[0];
    (x0, x1)
}

/// The tensors a UniPC run carries between steps (`last`, `x0_{i−1}`, `x0_{i−2}`), generic over
/// the tensor type, and the one place that applies a [`StepPlan`] to them.
///
/// `T` is whatever the caller combines: a Burn tensor in the pipeline, `Vec<f32>` in tests. Start
/// a new history with every [`HeliosSolver`] (every `set_timesteps`).
///
/// With Burn tensors the pipeline loop reads
/// ```text
/// let mut solver = scheduler.set_timesteps(n, Some(stage), None, Some(mu))?;
/// let mut history = SolverHistory::new();
/// for i in 0..solver.len() {
///     let v = guidance.apply(dit(&x, t[i]), …);              // f32 [B, C, T, H, W]
///     let plan = solver.step_plan(i);
///     x = history.step(&plan, x, v, |terms| {
///         terms[1..].iter().fold(terms[0].1.clone() * terms[0].0, |acc, (c, t)| acc + (*t).clone() * *c)
///     });
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SolverHistory<T> {
    last: Option<T>,
    x0_prev: Option<T>,
    x0_prev2: Option<T>,
}

impl<T> Default for SolverHistory<T> {
    fn default() -> Self {
        Self {
            last: None,
            x0_prev: None,
            x0_prev2: None,
        }
    }
}

impl<T: Clone> SolverHistory<T> {
    /// An empty history (step 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `plan` to `sample` (`x_i`) and `model_output` (`v_i`) and returns `x_{i+1}`.
    ///
    /// `combine(&[(c_0, t_0), (c_1, t_1), …])` must return `Σ c_k·t_k`, in the sample dtype
    /// (diffusers rounds each `c_k` to the tensor dtype before multiplying). Terms with a zero
    /// weight are never passed.
    ///
    /// # Panics
    /// If the plan needs a history tensor this history does not hold (plans out of order).
    pub fn step<F>(&mut self, plan: &StepPlan, sample: T, model_output: T, mut combine: F) -> T
    where
        F: FnMut(&[(f64, &T)]) -> T,
    {
        let mut lin = |terms: &[(f64, Option<&T>)]| {
            let terms: Vec<(f64, &T)> = terms
                .iter()
                .filter(|(c, _)| *c != 0.0)
                .map(|(c, t)| {
                    (
                        *c,
                        t.expect("SolverHistory: plan needs a missing history term"),
                    )
                })
                .collect();
            combine(&terms)
        };
        match plan {
            StepPlan::Euler(e) => lin(&[(1.0, Some(&sample)), (e.dt, Some(&model_output))]),
            StepPlan::UniPc(p) => {
                let x0 = lin(&[(1.0, Some(&sample)), (-p.sigma, Some(&model_output))]);
                let corrected = match &p.corrector {
                    Some(c) => lin(&[
                        (c.last, self.last.as_ref()),
                        (c.x0[0], Some(&x0)),
                        (c.x0[1], self.x0_prev.as_ref()),
                        (c.x0[2], self.x0_prev2.as_ref()),
                    ]),
                    None => sample,
                };
                let q = &p.predictor;
                let next = lin(&[
                    (q.sample, Some(&corrected)),
                    (q.x0[0], Some(&x0)),
                    (q.x0[1], self.x0_prev.as_ref()),
                ]);
                self.last = Some(corrected);
                self.x0_prev2 = self.x0_prev.take();
                self.x0_prev = Some(x0);
                next
            }
        }
    }
}
