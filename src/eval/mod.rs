//! Evaluation of a model on text: perplexity ([`ppl`]) and KL-divergence against a
//! reference model ([`kld`]), with llama-perplexity's method and statistics.

pub mod kld;
pub mod ppl;
