//! Summary statistics with llama-bench's conventions (sample standard deviation).

/// Mean of `v` (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (n − 1), 0 for fewer than two values — as llama-bench computes it.
pub fn stdev(v: &[f64]) -> f64 {
    if v.len() <= 1 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Percentile `p` (0..=100) by linear interpolation between closest ranks; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let r = (p.clamp(0.0, 100.0) / 100.0) * (s.len() - 1) as f64;
    let lo = r.floor() as usize;
    let hi = r.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (r - lo as f64)
}

/// Relative change from the first quarter of `v` to the last quarter (drift over a soak);
/// 0 when fewer than 4 samples.
pub fn drift(v: &[f64]) -> f64 {
    if v.len() < 4 {
        return 0.0;
    }
    let q = v.len() / 4;
    let a = mean(&v[..q]);
    let b = mean(&v[v.len() - q..]);
    if a == 0.0 {
        0.0
    } else {
        (b - a) / a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdev_is_sample_stdev() {
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!((mean(&v) - 5.0).abs() < 1e-12);
        assert!((stdev(&v) - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(stdev(&[3.0]), 0.0);
    }

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert!((percentile(&v, 50.0) - 50.5).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn drift_sign() {
        assert!(drift(&[10.0, 10.0, 10.0, 10.0, 9.0, 9.0, 9.0, 9.0]) < -0.09);
        assert_eq!(drift(&[1.0, 2.0]), 0.0);
    }
}
