//! Zipfian ranks (Gray et al., "Quickly generating billion-record synthetic databases", as
//! YCSB uses it): rank 0 is the hottest; θ in (0, 1) sets the skew.

use hotshard_nvme::SplitMix64;

#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    half_pow_theta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipf {
    /// Ranks in `0..n`. Errors unless `n >= 1` and `0 < theta < 1`.
    pub fn new(n: u64, theta: f64) -> anyhow::Result<Zipf> {
        anyhow::ensure!(n >= 1, "zipfian needs at least one key");
        anyhow::ensure!(
            theta > 0.0 && theta < 1.0,
            "zipfian θ must be between 0 and 1 (exclusive), got {theta}"
        );
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let eta = if n <= 2 {
            1.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        };
        Ok(Zipf {
            n,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        })
    }

    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n - 1);
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u64, theta: f64, samples: usize) -> Vec<u64> {
        let z = Zipf::new(n, theta).unwrap();
        let mut rng = SplitMix64::new(1);
        let mut c = vec![0u64; n as usize];
        for _ in 0..samples {
            c[z.sample(&mut rng) as usize] += 1;
        }
        c
    }

    #[test]
    fn rank_frequencies_follow_the_power_law() {
        let n = 1000;
        let samples = 400_000;
        let c = counts(n, 0.99, samples);
        let z = zeta(n, 0.99);
        // Expected share of rank r is 1/((r+1)^θ ζ(n)). Ranks 0 and 1 are exact by
        // construction; the closed form behind the rest is Gray et al.'s approximation,
        // within 20% at the head.
        for (r, &got) in c.iter().enumerate().take(5) {
            let expect = samples as f64 / ((r + 1) as f64).powf(0.99) / z;
            let got = got as f64;
            let tolerance = if r < 2 { 0.05 } else { 0.2 };
            assert!(
                (got - expect).abs() / expect < tolerance,
                "rank {r}: {got} vs {expect}"
            );
        }
        assert!(c.iter().sum::<u64>() == samples as u64);
        // The hottest 1% of keys take far more than 1% of requests.
        let head: u64 = c[..10].iter().sum();
        assert!(head as f64 / samples as f64 > 0.3, "head share {head}");
    }

    #[test]
    fn lower_theta_is_flatter() {
        let steep = counts(1000, 0.99, 100_000);
        let flat = counts(1000, 0.5, 100_000);
        assert!(steep[0] > 2 * flat[0], "{} vs {}", steep[0], flat[0]);
    }

    #[test]
    fn stays_in_range_for_tiny_key_spaces() {
        for n in 1..4 {
            let c = counts(n, 0.9, 1000);
            assert_eq!(c.len() as u64, n);
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Zipf::new(0, 0.5).is_err());
        assert!(Zipf::new(10, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
    }
}
