//! The CPU flash-attention task for small heads (`D == D_v ≤ 16`, e.g. the tiny test
//! checkpoints' 2 heads of 12), used by [`super::attention_dispatch`] in place of its gemm
//! calls when the CPU has AVX-512 or AVX2+FMA.
//!
//! At head sizes this small a gemm call per key block is mostly packing and stores (`k = D`),
//! and the softmax between the two products reads the score tile three times. This kernel keeps
//! the work in vector registers instead, with the **queries along the lanes** (PyTorch's
//! `FlashAttentionKernel.cpp` with rows and lanes swapped): per group of `L` queries (16 with
//! AVX-512, 8 with AVX2) it holds `Qᵀ·scale` as `D` vectors, and per block of keys
//! 1. computes the scores of `U` keys at a time, `s_j = Σ_d K[j, d]·Qᵀ[d]` (the key element
//!    broadcast, `U` independent accumulators), and their running maximum lane by lane;
//! 2. rescales the output and row sums so far by `exp(m_old − m_new)`, then for each key
//!    `p_j = exp(s_j − m_new)`, `sum += p_j` and `Oᵀ[d] += V[j, d]·p_j` (`D` accumulators).
//!
//! Max, sum and rescale are vertical vector operations: no horizontal reductions, and a
//! transpose only when the queries are loaded and the outputs written. The math is the online
//! softmax of the gemm path (`exp` is the same Cephes polynomial, [`super::attention_dispatch`]'s
//! `exp_nonpositive_with::<true>`, lane by lane); only the summation order differs.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Largest head size (`D == D_v`) this kernel takes.
pub const MAX_HEAD_DIM: usize = 16;
/// Keys per block: the score tile is `KV_BLOCK × L` f32 (16 KiB at 16 lanes), which stays in
/// L1 beside the key and value rows being read.
const KV_BLOCK: usize = 256;

/// Keys and values of one head, read in place: the pointer to row 0 and the row stride in
/// elements (the stride along `D` is 1).
#[derive(Clone, Copy)]
pub struct Rows {
    pub ptr: *const f32,
    pub stride: isize,
}

/// Queries of one task, read in place: the pointer to row 0, the row stride and the stride
/// along `D`, in elements.
#[derive(Clone, Copy)]
pub struct Queries {
    pub ptr: *const f32,
    pub row_stride: isize,
    pub dim_stride: isize,
}

/// `softmax(Q·Kᵀ·scale)·V` for `rows` queries against `l_k` keys of head size `d`, written
/// row-major to `out` (`[rows, d]`), if this kernel takes the shape on this CPU (`d ≤ 16`,
/// AVX-512 or AVX2+FMA); `false` with `out` untouched otherwise.
///
/// # Safety
/// `q` must address `rows × d` readable f32, and `k` and `v` `l_k` rows of `d` contiguous
/// readable f32 each; `out.len() == rows · d`.
pub unsafe fn attend(
    q: Queries,
    k: Rows,
    v: Rows,
    out: &mut [f32],
    [rows, d, l_k]: [usize; 3],
    scale: f32,
) -> bool {
    if d == 0 || d > MAX_HEAD_DIM || rows == 0 || l_k == 0 {
        return false;
    }
    debug_assert_eq!(out.len(), rows * d);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! by_head_dim {
            ($f:ident, $($n:literal)*) => {
                match d {
                    // SAFETY: the CPU has the features `$f` is built for (checked before each
                    // use of this macro); the pointers are the caller's contract.
                    $($n => unsafe { $f::<$n>(q, k, v, out, rows, l_k, scale) },)*
                    _ => unreachable!("head size {d} checked above"),
                }
            };
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            by_head_dim!(attend_avx512, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            return true;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            by_head_dim!(attend_avx2, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            return true;
        }
    }
    let _ = (q, k, v, out, rows, l_k, scale);
    false
}

/// `$name::<D>`: [`attend_lanes`] over the vector type `$lanes` with `$keys` keys per step,
/// built with the target features `$features` so that the [`Lanes`] intrinsics inline.
#[cfg(target_arch = "x86_64")]
macro_rules! attend_entry {
    ($name:ident, $features:literal, $lanes:ty, $keys:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const D: usize>(
            q: Queries,
            k: Rows,
            v: Rows,
            out: &mut [f32],
            rows: usize,
            l_k: usize,
            scale: f32,
        ) {
            // SAFETY: forwarded contract; the width's intrinsics are enabled here.
            unsafe { attend_lanes::<$lanes, D, $keys>(q, k, v, out, rows, l_k, scale) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
attend_entry!(attend_avx512, "avx512f,fma", Avx512, 8);
#[cfg(target_arch = "x86_64")]
attend_entry!(attend_avx2, "avx2,fma", Avx2, 4);

/// The vector operations the kernel needs, for one register width. Every method is an
/// intrinsic of the width's target features, so it may only run inside a function built with
/// them (the `attend_*` functions above), into which it is inlined.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    /// f32 lanes per vector.
    const L: usize;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a·b + c`, one rounding.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn max(a: Self, b: Self) -> Self;
    /// Rounded to the nearest integer (ties to even).
    unsafe fn round(a: Self) -> Self;
    /// `p·2^n` for integer-valued `n ≤ 0` (results below 2⁻¹²⁶ may flush to 0).
    unsafe fn scale_pow2(p: Self, n: Self) -> Self;
}

/// One impl of [`Lanes`] per width: `$v` wraps the register type `$reg`, each method is one
/// intrinsic (of the `_mm512_` or `_mm256_` family), in an `unsafe` block whose only condition
/// is the target feature (and, for `load`/`store`, the caller's pointer).
#[cfg(target_arch = "x86_64")]
macro_rules! lanes_impl {
    ($v:ident, $reg:ty, $l:literal, $set1:ident, $loadu:ident, $storeu:ident, $fmadd:ident,
     $add:ident, $sub:ident, $mul:ident, $max:ident, $round:ident, $scale:ident) => {
        #[derive(Clone, Copy)]
        struct $v($reg);

        // SAFETY (every method): the intrinsics need only the target feature of the width,
        // which the caller's function enables (the trait's contract); `load` and `store` read
        // and write `L` f32 at the caller's pointer.
        impl Lanes for $v {
            const L: usize = $l;
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                Self(unsafe { $set1(x) })
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                Self(unsafe { $loadu(p) })
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                unsafe { $storeu(p, self.0) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                Self(unsafe { $fmadd(a.0, b.0, c.0) })
            }
            #[inline(always)]
            unsafe fn add(a: Self, b: Self) -> Self {
                Self(unsafe { $add(a.0, b.0) })
            }
            #[inline(always)]
            unsafe fn sub(a: Self, b: Self) -> Self {
                Self(unsafe { $sub(a.0, b.0) })
            }
            #[inline(always)]
            unsafe fn mul(a: Self, b: Self) -> Self {
                Self(unsafe { $mul(a.0, b.0) })
            }
            #[inline(always)]
            unsafe fn max(a: Self, b: Self) -> Self {
                Self(unsafe { $max(a.0, b.0) })
            }
            #[inline(always)]
            unsafe fn round(a: Self) -> Self {
                Self(unsafe { $round(a.0) })
            }
            #[inline(always)]
            unsafe fn scale_pow2(p: Self, n: Self) -> Self {
                Self(unsafe { $scale(p.0, n.0) })
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
lanes_impl!(
    Avx512,
    __m512,
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_mul_ps,
    _mm512_max_ps,
    round_avx512,
    _mm512_scalef_ps
);

/// `_mm512_roundscale_ps` to the nearest integer.
///
/// # Safety
/// Inside an AVX-512 function.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_avx512(a: __m512) -> __m512 {
    unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
}

#[cfg(target_arch = "x86_64")]
lanes_impl!(
    Avx2,
    __m256,
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_mul_ps,
    _mm256_max_ps,
    round_avx2,
    scale_pow2_avx2
);

/// `_mm256_round_ps` to the nearest integer.
///
/// # Safety
/// Inside an AVX function.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_avx2(a: __m256) -> __m256 {
    unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
}

/// `p·2^n` (AVX2 has no `scalef`): `n` clamped to −126 and written into a float's exponent.
///
/// # Safety
/// Inside an AVX2 function.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scale_pow2_avx2(p: __m256, n: __m256) -> __m256 {
    unsafe {
        let n = _mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-126.0)));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }
}

/// `2^y` lane by lane for `y ≤ 0` (scores in log2 units: the queries carry `log2(e)`):
/// `n = round(y)`, `2^(y − n)` by a degree-5 polynomial on [−½, ½] (relative error below
/// 2.5e-7, a couple of ulp like `exp_nonpositive`'s), times `2^n`. Fewer operations than `exp` of a natural-log
/// argument, which needs a two-constant reduction: the inner loop's cost is this and the
/// products. `y` must be finite; below −126 the result may flush to 0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp2_nonpositive<V: Lanes>(y: V) -> V {
    /// Degree 5 down to 1: a least-squares fit of `(2^f − 1)` in relative error on [−½, ½]
    /// (max 1.8e-7 evaluated in f32, against 2e-6 for the Taylor polynomial of that degree).
    const C: [f32; 5] = [
        1.321_867_7e-3,
        9.671_708e-3,
        5.550_893e-2,
        2.402_223_8e-1,
        6.931_469e-1,
    ];
    // SAFETY (whole body): vector arithmetic only, inside the caller's target features.
    unsafe {
        let n = V::round(y);
        let f = V::sub(y, n);
        let mut p = V::splat(C[0]);
        for c in &C[1..] {
            p = V::fmadd(p, f, V::splat(*c));
        }
        V::scale_pow2(V::fmadd(p, f, V::splat(1.0)), n)
    }
}

/// The kernel for one register width `V`, head size `D` and `U` keys per step of the scores
/// (`D + U` vector registers live there, `D + 4` in the accumulation).
///
/// # Safety
/// As [`attend`], inside a function built with `V`'s target features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn attend_lanes<V: Lanes, const D: usize, const U: usize>(
    q: Queries,
    k: Rows,
    v: Rows,
    out: &mut [f32],
    rows: usize,
    l_k: usize,
    scale: f32,
) {
    let l = V::L;
    let groups = rows.div_ceil(l);
    // Qᵀ·scale per group of L queries ([groups][D][L]); lanes past the last query stay 0
    // (their scores are 0 and their outputs are dropped).
    let mut qt = vec![0.0f32; groups * D * l];
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    for r in 0..rows {
        for dd in 0..D {
            let index = r as isize * q.row_stride + dd as isize * q.dim_stride;
            // SAFETY: row r < rows, dd < D: inside Q (the caller's contract).
            qt[(r / l * D + dd) * l + r % l] = unsafe { *q.ptr.offset(index) } * scale_log2;
        }
    }
    let mut acc = vec![0.0f32; groups * D * l]; // Oᵀ, [groups][D][L]
    let mut row_max = vec![f32::NEG_INFINITY; groups * l];
    let mut row_sum = vec![0.0f32; groups * l];
    let mut scores = vec![0.0f32; KV_BLOCK.min(l_k) * l];
    // This block's keys and values packed row after row ([n][D]): the groups below read them
    // from L1 whatever the heads' interleaving in the input.
    let mut k_block = vec![0.0f32; KV_BLOCK.min(l_k) * D];
    let mut v_block = vec![0.0f32; KV_BLOCK.min(l_k) * D];
    for j0 in (0..l_k).step_by(KV_BLOCK) {
        let n = KV_BLOCK.min(l_k - j0);
        for (j, (kr, vr)) in k_block
            .chunks_exact_mut(D)
            .zip(v_block.chunks_exact_mut(D))
            .take(n)
            .enumerate()
        {
            let row = (j0 + j) as isize;
            // SAFETY: rows j0..j0+n of K and V, D contiguous elements each (the caller's
            // contract).
            unsafe {
                kr.copy_from_slice(std::slice::from_raw_parts(k.ptr.offset(row * k.stride), D));
                vr.copy_from_slice(std::slice::from_raw_parts(v.ptr.offset(row * v.stride), D));
            }
        }
        let (kb, vb) = (k_block.as_ptr(), v_block.as_ptr());
        for g in 0..groups {
            // SAFETY: keys and values j0..j0+n lie in K and V (the caller's contract); every
            // buffer offset below is within the vectors allocated above.
            unsafe {
                let qg = qt.as_ptr().add(g * D * l);
                let block_max = scores_block::<V, D, U>(qg, kb, D as isize, n, scores.as_mut_ptr());
                let m_ptr = row_max.as_mut_ptr().add(g * l);
                let m_old = V::load(m_ptr);
                let m_new = V::max(m_old, block_max);
                m_new.store(m_ptr);
                // The first block rescales zeros: m_old = −inf is clamped (0, not NaN).
                let correction = exp2_nonpositive(V::max(V::sub(m_old, m_new), V::splat(-150.0)));
                accumulate_block::<V, D>(
                    scores.as_ptr(),
                    vb,
                    D as isize,
                    n,
                    m_new,
                    correction,
                    acc.as_mut_ptr().add(g * D * l),
                    row_sum.as_mut_ptr().add(g * l),
                );
            }
        }
    }
    for (r, o) in out.chunks_exact_mut(D).enumerate() {
        let (g, lane) = (r / l, r % l);
        let inv = 1.0 / row_sum[g * l + lane];
        for (dd, x) in o.iter_mut().enumerate() {
            *x = acc[(g * D + dd) * l + lane] * inv;
        }
    }
}

/// `scores[j] = Σ_d K[j, d]·qt[d]` for the `n` keys at `k` (row stride `ks`), `U` keys at a
/// time; returns the lane-wise maximum.
///
/// # Safety
/// `qt` holds `D` vectors, `k` `n` rows of `D` f32, `scores` `n` vectors.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_block<V: Lanes, const D: usize, const U: usize>(
    qt: *const f32,
    k: *const f32,
    ks: isize,
    n: usize,
    scores: *mut f32,
) -> V {
    let l = V::L;
    // SAFETY (whole body): offsets within the caller's buffers; vector ops inside its target
    // features.
    unsafe {
        let q: [V; D] = std::array::from_fn(|dd| V::load(qt.add(dd * l)));
        let mut max = V::splat(f32::NEG_INFINITY);
        let mut j = 0;
        while j + U <= n {
            let row = k.offset(j as isize * ks);
            let mut s = [V::splat(0.0); U];
            for (dd, qd) in q.iter().enumerate() {
                for (u, su) in s.iter_mut().enumerate() {
                    let key = V::splat(*row.offset(u as isize * ks + dd as isize));
                    *su = V::fmadd(key, *qd, *su);
                }
            }
            for (u, su) in s.iter().enumerate() {
                su.store(scores.add((j + u) * l));
            }
            // A tree, not a chain through `max`.
            let mut width = U;
            while width > 1 {
                width /= 2;
                for u in 0..width {
                    s[u] = V::max(s[u], s[u + width]);
                }
            }
            max = V::max(max, s[0]);
            j += U;
        }
        while j < n {
            let row = k.offset(j as isize * ks);
            let mut s = V::splat(0.0);
            for (dd, qd) in q.iter().enumerate() {
                s = V::fmadd(V::splat(*row.add(dd)), *qd, s);
            }
            s.store(scores.add(j * l));
            max = V::max(max, s);
            j += 1;
        }
        max
    }
}

/// One key block of the online softmax for a group of queries: `acc` (`D` vectors) and `sum`
/// scaled by `correction`, then for each key `p = exp(score − max)`, `sum += p` and
/// `acc[d] += V[j, d]·p`.
///
/// # Safety
/// `scores` holds `n` vectors, `v` `n` rows of `D` f32, `acc` `D` vectors and `sum` one.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn accumulate_block<V: Lanes, const D: usize>(
    scores: *const f32,
    v: *const f32,
    vs: isize,
    n: usize,
    max: V,
    correction: V,
    acc: *mut f32,
    sum: *mut f32,
) {
    let l = V::L;
    // SAFETY (whole body): offsets within the caller's buffers; vector ops inside its target
    // features.
    unsafe {
        let mut o: [V; D] = std::array::from_fn(|dd| V::mul(V::load(acc.add(dd * l)), correction));
        let mut total = V::mul(V::load(sum), correction);
        // Four keys per step: their exponentials are independent chains the core overlaps.
        let mut j = 0;
        while j + 4 <= n {
            let p: [V; 4] = std::array::from_fn(|u| {
                exp2_nonpositive(V::sub(V::load(scores.add((j + u) * l)), max))
            });
            total = V::add(total, V::add(V::add(p[0], p[1]), V::add(p[2], p[3])));
            for (u, pu) in p.iter().enumerate() {
                let row = v.offset((j + u) as isize * vs);
                for (dd, od) in o.iter_mut().enumerate() {
                    *od = V::fmadd(V::splat(*row.add(dd)), *pu, *od);
                }
            }
            j += 4;
        }
        for j in j..n {
            let p = exp2_nonpositive(V::sub(V::load(scores.add(j * l)), max));
            total = V::add(total, p);
            let row = v.offset(j as isize * vs);
            for (dd, od) in o.iter_mut().enumerate() {
                *od = V::fmadd(V::splat(*row.add(dd)), p, *od);
            }
        }
        for (dd, od) in o.iter().enumerate() {
            od.store(acc.add(dd * l));
        }
        total.store(sum);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `softmax(q·kᵀ·scale)·v` in f64, row by row: `q [rows, d]`, `k, v [l_k, d]` row-major.
    fn reference(q: &[f32], k: &[f32], v: &[f32], d: usize, scale: f32) -> Vec<f32> {
        let l_k = k.len() / d;
        let mut out = Vec::with_capacity(q.len());
        for qr in q.chunks_exact(d) {
            let s: Vec<f64> = k
                .chunks_exact(d)
                .map(|kr| {
                    qr.iter()
                        .zip(kr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                })
                .map(|x| x * scale as f64)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = p.iter().sum();
            for dd in 0..d {
                let o: f64 = (0..l_k).map(|j| p[j] * v[j * d + dd] as f64).sum();
                out.push((o / total) as f32);
            }
        }
        out
    }

    /// Deterministic values in [-amp, amp).
    fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    type Kernel = unsafe fn(Queries, Rows, Rows, &mut [f32], usize, usize, f32);

    fn check(kernel: Kernel, d: usize, rows: usize, l_k: usize) {
        // Queries interleaved with another head (row stride 2·d), keys and values contiguous.
        let q2 = values(rows * 2 * d, 1, 4.0);
        let (k, v) = (values(l_k * d, 2, 2.0), values(l_k * d, 3, 1.0));
        let q: Vec<f32> = q2
            .chunks_exact(2 * d)
            .flat_map(|r| r[d..].to_vec())
            .collect();
        let scale = (d as f32).sqrt().recip();
        let mut out = vec![f32::NAN; rows * d];
        // SAFETY: the pointers address rows × d queries (stride 2·d, from element d) and l_k
        // contiguous rows of keys and values; the test runs only where the CPU has the features.
        unsafe {
            kernel(
                Queries {
                    ptr: q2.as_ptr().add(d),
                    row_stride: 2 * d as isize,
                    dim_stride: 1,
                },
                Rows {
                    ptr: k.as_ptr(),
                    stride: d as isize,
                },
                Rows {
                    ptr: v.as_ptr(),
                    stride: d as isize,
                },
                &mut out,
                rows,
                l_k,
                scale,
            )
        };
        let want = reference(&q, &k, &v, d, scale);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6,
                "d {d}, rows {rows}, l_k {l_k}: [{i}] {a} vs {b}"
            );
        }
    }

    /// Both builds (AVX-512 where the CPU has it, AVX2+FMA) against an f64 softmax, with
    /// query counts that leave partial vectors, key counts that leave partial key blocks and
    /// partial steps, and scores large enough that the running max grows between blocks.
    #[test]
    fn both_builds_match_an_f64_softmax() {
        let shapes = [
            (12, 37, 600),
            (12, 16, 256),
            (1, 5, 3),
            (7, 40, 515),
            (16, 33, 1),
        ];
        let mut ran = 0;
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (d, rows, l_k) in shapes {
                let kernel: Kernel = match d {
                    1 => attend_avx512::<1>,
                    7 => attend_avx512::<7>,
                    12 => attend_avx512::<12>,
                    _ => attend_avx512::<16>,
                };
                check(kernel, d, rows, l_k);
            }
            ran += 1;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            for (d, rows, l_k) in shapes {
                let kernel: Kernel = match d {
                    1 => attend_avx2::<1>,
                    7 => attend_avx2::<7>,
                    12 => attend_avx2::<12>,
                    _ => attend_avx2::<16>,
                };
                check(kernel, d, rows, l_k);
            }
            ran += 1;
        }
        if ran == 0 {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2+FMA");
        }
    }

    /// The exponential stays within 2.5e-7 relative of `exp2` over the softmax range, and is
    /// exactly 1 at 0.
    #[test]
    fn exp2_is_accurate() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn run(y: f32) -> f32 {
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512 is enabled here; `out` holds 16 f32.
            unsafe { exp2_nonpositive(Avx512::splat(y)).store(out.as_mut_ptr()) };
            out[0]
        }
        let mut y = 0.0f32;
        while y > -126.0 {
            // SAFETY: the CPU has AVX-512 (checked above).
            let got = unsafe { run(y) };
            let want = (y as f64).exp2();
            assert!(
                ((got as f64 - want) / want).abs() < 2.5e-7,
                "2^{y}: {got} vs {want}"
            );
            y -= 0.00731;
        }
        // SAFETY: as above.
        assert_eq!(unsafe { run(0.0) }, 1.0);
    }
}
