//! Tensor types and their quantize / dequantize kernels.
//!
//! The public surface is five functions that dispatch on [`GgmlType`]:
//!
//! * [`quantize_row`] / [`dequantize_row`]: one row (a whole number of blocks);
//! * [`quantize_tensor`] / [`dequantize_tensor`]: a whole tensor, rows spread over the rayon
//!   thread pool; the output is identical for any number of threads;
//! * [`can_quantize`]: the types ggufq writes.
//!
//! Every encoder is byte-exact with ggml 0.25.3 built without floating-point contraction
//! (the golden vectors in `shared/testdata/golden/` are the contract, see `tests/golden.rs`).
//! Plain encoders follow ggml's `quantize_row_<type>_ref`; with an importance matrix the legacy
//! 4/5-bit types and the K-quants follow `quantize_row_<type>_impl`. F16, BF16, F32 and Q8_0
//! take no importance weights (ggml ignores them), so the imatrix is ignored for those types.
//!
//! # NaN and infinity policy
//!
//! The row kernels are pure: they accept any f32 and do what ggml's C code does on x86
//! (f16/bf16 keep NaN as a quiet NaN and Inf as Inf; a NaN element of a quantized block is
//! skipped by the scale search and stored as the raw quant 0, because x86 converts NaN to the
//! integer 0x80000000 whose low bits are 0). [`quantize_tensor`]
//! then checks its output the way llama-quantize does (`ggml_validate_row_data`): a NaN or Inf
//! in an f32/f16/bf16 value or in a block scale is an error naming the row and block, so a
//! tensor holding NaN/Inf, or values that overflow f16 (|x| >= 65520), is never written.
//! [`validate_row_data`] is the same check on its own.

pub mod float;
pub mod imatrix;
pub mod kquants;
pub mod legacy;
pub mod types;

use rayon::prelude::*;

use crate::error::{Error, Result};
pub use types::GgmlType;

/// The types ggufq can write, in ggml id order.
pub const QUANTIZABLE: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::BF16,
];

/// True for the storage types ggufq can write: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
/// Q2_K Q3_K Q4_K Q5_K Q6_K. (Q8_K is an activation format: [`quantize_row`] encodes it, but it
/// is not a storage type, as in llama-quantize.)
pub fn can_quantize(ty: GgmlType) -> bool {
    QUANTIZABLE.contains(&ty)
}

/// True for the types [`dequantize_row`] decodes.
pub fn can_dequantize(ty: GgmlType) -> bool {
    can_quantize(ty) || ty == GgmlType::Q8_K
}

fn type_list(types: impl Iterator<Item = GgmlType>) -> String {
    types.map(|t| t.name()).collect::<Vec<_>>().join(" ")
}

/// Bytes of `n` elements of `ty`, or an error naming the block size.
fn row_bytes(ty: GgmlType, n: usize) -> Result<usize> {
    let bs = ty.block_size() as usize;
    if n % bs != 0 {
        return Err(Error::msg(format!(
            "{ty}: {n} elements is not a whole number of {bs}-element blocks"
        )));
    }
    ty.bytes_for(n as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Error::msg(format!("{ty}: {n} elements overflow the address space")))
}

/// Quantize one row `src` of type-`ty` blocks into `dst`.
///
/// `src.len()` must be a multiple of the block size and `dst.len()` exactly
/// `ty.bytes_for(src.len())`. `imatrix` holds one importance weight per element of the row
/// (llama.cpp's per-column imatrix); it is used by Q4_0 Q4_1 Q5_0 Q5_1 and Q2_K..Q6_K and
/// ignored by the other types, as in ggml. Always pass a whole tensor row: the weighted
/// encoders use statistics of the row.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    if !can_quantize(ty) && ty != GgmlType::Q8_K {
        return Err(Error::msg(format!(
            "cannot quantize to {ty}; supported types: {}",
            type_list(QUANTIZABLE.iter().copied())
        )));
    }
    let need = row_bytes(ty, src.len())?;
    if dst.len() != need {
        return Err(Error::msg(format!(
            "{ty}: output buffer holds {} bytes, {} elements need {need}",
            dst.len(),
            src.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != src.len() {
            return Err(Error::msg(format!(
                "{ty}: importance matrix has {} values for a row of {}",
                w.len(),
                src.len()
            )));
        }
    }
    use GgmlType as T;
    match (ty, imatrix) {
        (T::F32, _) => float::quantize_row_f32(src, dst),
        (T::F16, _) => float::quantize_row_f16(src, dst),
        (T::BF16, _) => float::quantize_row_bf16(src, dst),
        (T::Q8_0, _) => legacy::quantize_row_q8_0(src, dst),
        (T::Q4_0, None) => legacy::quantize_row_q4_0(src, dst),
        (T::Q4_1, None) => legacy::quantize_row_q4_1(src, dst),
        (T::Q5_0, None) => legacy::quantize_row_q5_0(src, dst),
        (T::Q5_1, None) => legacy::quantize_row_q5_1(src, dst),
        (T::Q4_0, Some(w)) => legacy::quantize_row_q4_0_imatrix(src, w, dst),
        (T::Q4_1, Some(w)) => legacy::quantize_row_q4_1_imatrix(src, w, dst),
        (T::Q5_0, Some(w)) => legacy::quantize_row_q5_0_imatrix(src, w, dst),
        (T::Q5_1, Some(w)) => legacy::quantize_row_q5_1_imatrix(src, w, dst),
        (T::Q8_K, _) => kquants::quantize_row_q8k(src, dst)?,
        (_, w) => kquants::quantize_row(ty, src, w, dst)?,
    }
    Ok(())
}

/// Decode one row: `src` holds whole blocks of `ty`, `dst` receives
/// `src.len() / type_size * block_size` values. Bit-exact with ggml's `to_float`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(ty) {
        return Err(Error::msg(format!(
            "cannot decode {ty}; supported types: {}",
            type_list(QUANTIZABLE.iter().copied().chain([GgmlType::Q8_K]))
        )));
    }
    let need = row_bytes(ty, dst.len())?;
    if src.len() != need {
        return Err(Error::msg(format!(
            "{ty}: {} bytes given, {} elements need {need}",
            src.len(),
            dst.len()
        )));
    }
    use GgmlType as T;
    match ty {
        T::F32 => float::dequantize_row_f32(src, dst),
        T::F16 => float::dequantize_row_f16(src, dst),
        T::BF16 => float::dequantize_row_bf16(src, dst),
        T::Q4_0 => legacy::dequantize_row_q4_0(src, dst),
        T::Q4_1 => legacy::dequantize_row_q4_1(src, dst),
        T::Q5_0 => legacy::dequantize_row_q5_0(src, dst),
        T::Q5_1 => legacy::dequantize_row_q5_1(src, dst),
        T::Q8_0 => legacy::dequantize_row_q8_0(src, dst),
        _ => kquants::dequantize_row(ty, src, dst)?,
    }
    Ok(())
}

/// Rows per parallel task: at least ~64K elements of work per task, at least one row.
fn rows_per_task(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

/// Quantize a whole tensor of `data.len() / row_len` rows, each `row_len` long, in parallel
/// over the current rayon pool. The output does not depend on the number of threads.
///
/// `imatrix`, when given, holds `row_len` weights (one per column) applied to every row.
/// The output is checked like llama-quantize checks it (see the module docs): a NaN/Inf value
/// or block scale is an error naming the first bad row, and nothing is returned.
pub fn quantize_tensor(
    ty: GgmlType,
    data: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    // `quantize_rows_into` validates the shapes; size the buffer only when they can be valid.
    let mut out = if row_len == 0 || data.len() % row_len != 0 {
        Vec::new()
    } else {
        vec![0u8; data.len() / row_len * row_bytes(ty, row_len)?]
    };
    quantize_rows_into(ty, data, row_len, imatrix, 0, &mut out)?;
    Ok(out)
}

/// [`quantize_tensor`] into a caller's buffer, for a run of rows of a larger tensor:
/// `data` holds whole rows, `dst` exactly their encoded size, and `first_row` is the index of
/// the first row in the tensor (error messages name tensor rows). Encoding rows in separate
/// runs gives the same bytes as one call: rows are independent.
pub fn quantize_rows_into(
    ty: GgmlType,
    data: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    first_row: usize,
    dst: &mut [u8],
) -> Result<()> {
    if row_len == 0 {
        return Err(Error::msg(format!("{ty}: row length is 0")));
    }
    if data.len() % row_len != 0 {
        return Err(Error::msg(format!(
            "{ty}: {} values is not a whole number of rows of {row_len}",
            data.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != row_len {
            return Err(Error::msg(format!(
                "{ty}: importance matrix has {} values, rows have {row_len}",
                w.len()
            )));
        }
    }
    let rb = row_bytes(ty, row_len)?;
    let n_rows = data.len() / row_len;
    if dst.len() != n_rows * rb {
        return Err(Error::msg(format!(
            "{ty}: output buffer holds {} bytes, {n_rows} rows need {}",
            dst.len(),
            n_rows * rb
        )));
    }
    let rpt = rows_per_task(row_len);
    let results: Vec<Result<()>> = dst
        .par_chunks_mut(rb * rpt)
        .zip(data.par_chunks(row_len * rpt))
        .enumerate()
        .map(|(task, (dst, src))| {
            for (i, (d, s)) in dst.chunks_mut(rb).zip(src.chunks(row_len)).enumerate() {
                let row = first_row + task * rpt + i;
                quantize_row(ty, s, imatrix, d)
                    .and_then(|()| validate_row_data(ty, d))
                    .map_err(|e| Error::msg(format!("row {row}: {e}")))?;
            }
            Ok(())
        })
        .collect();
    // The first failing row in row order, whatever the scheduling was.
    results.into_iter().collect::<Result<()>>()
}

/// Decode a whole tensor of `n_elements` values of `ty` stored in `data`, in parallel.
pub fn dequantize_tensor(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !can_dequantize(ty) {
        return dequantize_row(ty, &[], &mut []).map(|()| Vec::new());
    }
    let need = row_bytes(ty, n_elements)?;
    if data.len() != need {
        return Err(Error::msg(format!(
            "{ty}: {} bytes given, {n_elements} elements need {need}",
            data.len()
        )));
    }
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    let blocks_per_task = (65_536 / bs).max(1);
    let mut out = vec![0f32; n_elements];
    out.par_chunks_mut(bs * blocks_per_task)
        .zip(data.par_chunks(ts * blocks_per_task))
        .try_for_each(|(dst, src)| dequantize_row(ty, src, dst))?;
    Ok(out)
}

/// Check encoded data like ggml's `ggml_validate_row_data` (what llama-quantize runs on every
/// chunk it writes): every f32/f16/bf16 value, and every block scale (`d`, and `m`/`dmin`
/// where the type has one), must be finite. Types without such fields pass.
pub fn validate_row_data(ty: GgmlType, data: &[u8]) -> Result<()> {
    let ts = ty.type_size() as usize;
    if data.len() % ts != 0 {
        return Err(Error::msg(format!(
            "{ty}: {} bytes is not a whole number of {ts}-byte blocks",
            data.len()
        )));
    }
    let f16_ok = |lo: u8, hi: u8| u16::from_le_bytes([lo, hi]) & 0x7C00 != 0x7C00;
    let bf16_ok = |lo: u8, hi: u8| u16::from_le_bytes([lo, hi]) & 0x7F80 != 0x7F80;
    let f32_ok =
        |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7F80_0000 != 0x7F80_0000;
    use GgmlType as T;
    // Byte offsets of the f16 scale fields inside one block.
    let f16_fields: &[usize] = match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 => &[0],
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => &[0, 2],
        T::Q2_K => &[80, 82],
        T::Q3_K => &[108],
        T::Q6_K => &[208],
        _ => &[],
    };
    for (i, b) in data.chunks_exact(ts).enumerate() {
        let ok = match ty {
            T::F32 | T::Q8_K => f32_ok(b),
            T::F16 => f16_ok(b[0], b[1]),
            T::BF16 => bf16_ok(b[0], b[1]),
            _ => f16_fields.iter().all(|&o| f16_ok(b[o], b[o + 1])),
        };
        if !ok {
            let what = if ty.is_quantized() { "block" } else { "value" };
            return Err(Error::msg(format!(
                "{ty}: {what} {i} holds NaN or Inf (the source holds NaN/Inf or values too \
                 large for the type)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as f32 * 0.731).sin() * 3.0 + (i % 7) as f32 * 0.01)
                    * if i % 97 == 0 { 20.0 } else { 1.0 }
            })
            .collect()
    }

    /// Every encoder writes every byte of its output, whatever the buffer held before (convert
    /// reuses output buffers without clearing them): all types, with and without importance
    /// weights, rows with zero and constant blocks included.
    #[test]
    fn rows_write_every_output_byte() {
        let row = 512;
        let mut x = sample(3 * row);
        x[..64].fill(0.0);
        x[row..row + 256].fill(0.25);
        let w: Vec<f32> = sample(row).iter().map(|v| v.abs() + 0.1).collect();
        for ty in QUANTIZABLE {
            for imatrix in [None, Some(&w[..])] {
                let n = row_bytes(ty, row).unwrap() * 3;
                let mut a = vec![0x00u8; n];
                let mut b = vec![0xFFu8; n];
                quantize_rows_into(ty, &x, row, imatrix, 0, &mut a).unwrap();
                quantize_rows_into(ty, &x, row, imatrix, 0, &mut b).unwrap();
                assert_eq!(a, b, "{ty}, imatrix {}", imatrix.is_some());
            }
        }
    }

    const LOCAL: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    #[test]
    fn can_quantize_lists_the_storage_types() {
        let names: Vec<_> = GgmlType::all()
            .filter(|t| can_quantize(*t))
            .map(|t| t.name())
            .collect();
        assert_eq!(
            names,
            [
                "F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                "Q5_K", "Q6_K", "BF16"
            ]
        );
        assert!(!can_quantize(GgmlType::Q8_K));
        assert!(!can_quantize(GgmlType::IQ2_XXS));
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let x = sample(40);
        let mut q = vec![0u8; 18];
        let e = quantize_row(GgmlType::Q4_0, &x, None, &mut q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("32-element blocks"), "{e}");
        let x = sample(32);
        let mut q = vec![0u8; 17];
        let e = quantize_row(GgmlType::Q4_0, &x, None, &mut q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("need 18"), "{e}");
        let mut q = vec![0u8; 18];
        let e = quantize_row(GgmlType::Q4_0, &x, Some(&[1.0; 31]), &mut q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("importance matrix"), "{e}");
        let e = quantize_row(GgmlType::IQ2_XXS, &x, None, &mut q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("supported types: F32 F16"), "{e}");
        let mut y = vec![0f32; 33];
        assert!(dequantize_row(GgmlType::Q8_0, &[0; 34], &mut y).is_err());
        assert!(dequantize_row(GgmlType::IQ4_NL, &[0; 18], &mut y[..32]).is_err());
        assert!(quantize_tensor(GgmlType::Q8_0, &x, 0, None).is_err());
        assert!(quantize_tensor(GgmlType::Q8_0, &x, 24, None).is_err());
        assert!(quantize_tensor(GgmlType::Q8_0, &sample(48), 24, None).is_err());
        assert!(quantize_tensor(GgmlType::Q4_0, &x, 32, Some(&[1.0; 3])).is_err());
        assert!(dequantize_tensor(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(dequantize_tensor(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert!(dequantize_tensor(GgmlType::MXFP4, &[0; 17], 32).is_err());
    }

    #[test]
    fn tensor_equals_rows_and_is_thread_count_independent() {
        let row_len = 576;
        let rows = 300; // several parallel tasks (113 rows per task)
        let x = sample(row_len * rows);
        let imat: Vec<f32> = (0..row_len)
            .map(|i| (i as f32).sin().abs() * 10.0 + 0.1)
            .collect();
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let (p1, p4) = (pool(1), pool(4));
        for ty in LOCAL {
            for w in [None, Some(&imat[..])] {
                let one = p1.install(|| quantize_tensor(ty, &x, row_len, w)).unwrap();
                let four = p4.install(|| quantize_tensor(ty, &x, row_len, w)).unwrap();
                assert!(one == four, "{ty}: 1 vs 4 threads differ");
                let rb = ty.bytes_for(row_len as u64).unwrap() as usize;
                for (r, (s, q)) in x.chunks(row_len).zip(one.chunks(rb)).enumerate() {
                    let mut d = vec![0u8; rb];
                    quantize_row(ty, s, w, &mut d).unwrap();
                    assert!(d == q, "{ty} row {r}");
                }
                let y1 = p1.install(|| dequantize_tensor(ty, &one, x.len())).unwrap();
                let y4 = p4.install(|| dequantize_tensor(ty, &one, x.len())).unwrap();
                let b1: Vec<u32> = y1.iter().map(|v| v.to_bits()).collect();
                let b4: Vec<u32> = y4.iter().map(|v| v.to_bits()).collect();
                assert!(b1 == b4, "{ty}: dequant 1 vs 4 threads differ");
                let mut yr = vec![0f32; row_len];
                dequantize_row(ty, &one[..rb], &mut yr).unwrap();
                assert!(yr.iter().zip(&y1).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn imatrix_is_ignored_where_ggml_ignores_it() {
        let x = sample(64);
        let w = vec![3.0f32; 64];
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let a = quantize_tensor(ty, &x, 64, None).unwrap();
            let b = quantize_tensor(ty, &x, 64, Some(&w)).unwrap();
            assert_eq!(a, b, "{ty}");
        }
        let a = quantize_tensor(GgmlType::Q4_1, &x, 64, None).unwrap();
        let b = quantize_tensor(GgmlType::Q4_1, &x, 64, Some(&w)).unwrap();
        assert_ne!(a, b, "Q4_1 must use the imatrix");
    }

    #[test]
    fn non_finite_input_is_rejected_with_its_row() {
        let mut x = sample(64 * 4);
        x[64 * 2 + 5] = f32::INFINITY;
        for ty in LOCAL {
            let e = quantize_tensor(ty, &x, 64, None).unwrap_err().to_string();
            assert!(e.starts_with("row 2:"), "{ty}: {e}");
        }
        // Values beyond f16 range overflow the F16 value / Q8_0 scale: rejected like llama.cpp.
        let mut x = sample(64);
        x[1] = 1.0e6;
        let e = quantize_tensor(GgmlType::F16, &x, 64, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("F16: value 1 holds NaN or Inf"), "{e}");
        let e = quantize_tensor(GgmlType::Q4_0, &x, 64, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Q4_0: block 0"), "{e}");
        // BF16 has the f32 range.
        assert!(quantize_tensor(GgmlType::BF16, &x, 64, None).is_ok());
        // A NaN in a Q8_0 block: the quant is 0 and the scale stays finite, as in ggml,
        // so llama-quantize would accept it and so do we.
        let mut x = sample(64);
        x[3] = f32::NAN;
        let q = quantize_tensor(GgmlType::Q8_0, &x, 64, None).unwrap();
        assert_eq!(q[2 + 3], 0);
    }

    #[test]
    fn validate_checks_scales_and_values() {
        assert!(validate_row_data(GgmlType::Q4_0, &[0u8; 17]).is_err());
        let mut b = [0u8; 20];
        assert!(validate_row_data(GgmlType::Q4_1, &b).is_ok());
        b[3] = 0x7C; // m = +Inf
        assert!(validate_row_data(GgmlType::Q4_1, &b).is_err());
        let mut k = [0u8; 84];
        k[83] = 0xFE; // Q2_K dmin = -NaN
        assert!(validate_row_data(GgmlType::Q2_K, &k).is_err());
        assert!(validate_row_data(GgmlType::F32, &f32::NAN.to_le_bytes()).is_err());
        assert!(validate_row_data(GgmlType::BF16, &[0x80, 0x7F]).is_err());
        assert!(validate_row_data(GgmlType::BF16, &[0x7F, 0x7F]).is_ok());
    }
}
